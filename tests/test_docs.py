"""The README's quick start runs as written and prints what its comments say."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.real_model
@pytest.mark.parametrize("block", range(len(python_blocks(README.read_text()))))
def test_readme_python_blocks_print_what_their_comments_say(block, tmp_path, monkeypatch):
    """A comment ending in '...' matches any output that starts with the text before it."""
    monkeypatch.chdir(tmp_path)
    code = python_blocks(README.read_text())[block]
    expected = [line.split("  # ")[-1].strip() for line in code.splitlines()
                if line.strip().startswith("print(") and "  # " in line]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    printed = out.getvalue().splitlines()
    assert len(printed) == len(expected)
    for got, want in zip(printed, expected, strict=True):
        assert got.startswith(want.removesuffix("...")) if want.endswith("...") else got == want, (got, want)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert [l for l in ci.splitlines() if l and not l.startswith(("#", "set ", "cd "))] == ["make test"]
