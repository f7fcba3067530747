"""SKILL.md and references/ stay true: every python block runs and prints what its comments say, every
Python call written inline names a real function with real arguments, every link resolves, and the
skill follows the skill format (frontmatter, length, a contents list in long files)."""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import inspect
import io
import json
import re

import pytest
from test_skill_support import (
    REFERENCES,
    ROOT,
    SKILL,
    TOOL_NAMES,
    blocks,
    compiled,
    docs,
    expected_output,
    first_code,
    headings,
    links,
    message_matches,
    outside_code,
    print_matches,
    section,
    slug,
    source_messages,
    table_rows,
)

REAL_MODEL = re.compile(r"""from_pretrained\(["'](smollm2-135m|gemma-3-270m)["']""")


def doc_params():
    params = []
    for path in docs():
        code = "".join(b.code for b in blocks(path.read_text(), "python"))
        marks = [pytest.mark.real_model] if REAL_MODEL.search(code) else []
        params.append(pytest.param(path, marks=marks, id=str(path.relative_to(ROOT))))
    return params


@pytest.mark.parametrize("path", doc_params())
def test_python_blocks_run_in_order_and_print_what_their_comments_say(path, tmp_path, monkeypatch):
    """One namespace per file, as a reader working down the page would have; plots land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks(path.read_text(), "python"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compiled(block, path), namespace)  # noqa: S102 - the docs are this repository's own code
        printed, expected = out.getvalue().splitlines(), expected_output(block)
        where = f"{path.name}, block at line {block.line}"
        assert len(printed) == len(expected), f"{where}: printed {printed}, the comments expect {expected}"
        for got, want in zip(printed, expected, strict=True):
            assert print_matches(got, want), f"{where}: printed {got!r}, the comment says {want!r}"
    from lens import HookedTransformer
    for name, value in namespace.items():
        if isinstance(value, HookedTransformer):
            assert value._hooks.hooked() == [], f"{path.name} leaves hooks attached to {name}: {value._hooks.hooked()}"


# --- inline Python -------------------------------------------------------------------------------

# Where the functions that inline code names live, by the name a reader uses.
INLINE_NAMESPACES = ("lens", "lens.analysis", "lens.patching", "lens.plots", "lens.sae", "lens.circuits")


def resolve(name: str):
    """(what a dotted name in the docs refers to, whether it is called on an instance): `patch`,
    `model.run_with_cache`, `cache.logit_attrs`, `HookedTransformer.from_pretrained`. (None, False) when
    its first part is nothing lens has."""
    from lens import ActivationCache, HookedTransformer
    first, *rest = name.split(".")
    instances = {"model": HookedTransformer, "cache": ActivationCache}
    if name == "model":  # model(...) is its forward
        return HookedTransformer.forward, True
    found = instances.get(first)
    for module in INLINE_NAMESPACES:
        candidate = getattr(importlib.import_module(module), first, None)
        if found is None and candidate is not None and not inspect.ismodule(candidate):
            found = candidate
    bound = first in instances
    for part in rest:
        if inspect.isclass(found):
            static = inspect.getattr_static(found, part, None)
            bound = bound or not isinstance(static, (classmethod, staticmethod))
        found = getattr(found, part, None)
    return found, bound and bool(rest)


# Names that stand for a reader's own function in prose: `fn(activation, hook)`, `metric(logits)`.
PLACEHOLDERS = {"fn", "hook", "metric"}


def is_elided(call: ast.Call) -> bool:
    return any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in call.args)


def inline_calls(text: str) -> list[tuple[str, ast.Call]]:
    """Inline code spans (outside fences) that are one Python call."""
    calls = []
    for span in re.findall(r"`([^`]+)`", outside_code(text)):
        if span.count("\n") > 2:
            continue  # not one span: backticks that pair up across paragraphs
        try:
            tree = ast.parse(" ".join(span.split()), mode="eval").body
        except SyntaxError:
            continue
        if isinstance(tree, ast.Call) and not any(isinstance(a, ast.Starred) for a in tree.args):
            calls.append((span, tree))
    return calls


@pytest.mark.parametrize("path", docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_inline_python_calls_name_real_functions_with_real_arguments(path):
    """`patch(model, clean, corrupted, metric, what="heads")` written in prose binds to the signature of
    lens's patch. A call of an MCP tool name with keyword arguments only (or `...`) is an MCP call, checked
    against the server's schemas in test_skill_mcp.py."""
    checked = 0
    for span, call in inline_calls(path.read_text()):
        name = ast.unparse(call.func)
        if name in TOOL_NAMES and (not call.args or is_elided(call)):
            continue
        fn, bound = resolve(name)
        if fn is None:
            first = name.split(".")[0]
            if resolve(first)[0] is None and ("." in name or hasattr(builtins, first) or first in PLACEHOLDERS):
                continue  # torch.tensor(...), result.summary(), print(...), fn(activation, hook): not lens names
            pytest.fail(f"{path.name}: `{span}` names {name!r}, which lens does not have")
        if is_elided(call):
            continue
        signature = inspect.signature(fn)
        args = ["self"] if bound else []
        try:
            signature.bind(*args, *range(len(call.args)), **{kw.arg: None for kw in call.keywords if kw.arg})
        except TypeError as error:
            pytest.fail(f"{path.name}: `{span}` does not fit {name}{signature}: {error}")
        checked += 1
    if path == SKILL:
        assert checked >= 10, f"SKILL.md should give the Python equivalent of its MCP calls ({checked} found)"


# --- links and structure -------------------------------------------------------------------------

@pytest.mark.parametrize("path", docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_to_a_file_and_heading(path):
    for target in links(path.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name} links to {target}, which does not exist"
        if anchor:
            assert linked.suffix == ".md", f"{path.name}: anchor into a non-markdown file: {target}"
            anchors = {slug(title) for _, title in headings(linked.read_text())}
            assert anchor in anchors, f"{path.name} links to {target}: no such heading in {linked.name}"


def frontmatter(text: str) -> tuple[dict, str]:
    import yaml
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, flags=re.DOTALL)
    assert match, "SKILL.md must open with a --- frontmatter block ---"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_skill_frontmatter_names_the_skill_and_says_when_to_use_it():
    meta, body = frontmatter(SKILL.read_text())
    assert set(meta) >= {"name", "description"}, meta
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", meta["name"]) and len(meta["name"]) <= 64, meta["name"]
    description = meta["description"]
    assert 200 <= len(description) <= 1024, len(description)
    for topic in ("attention head", "circuit", "activation patching", "logit attribution", "induction",
                  "logit lens", "steering"):
        assert topic in description.lower(), f"the description should mention {topic!r}"
    assert len(body.splitlines()) < 500


def test_skill_says_when_to_load_each_reference():
    text = SKILL.read_text()
    linked = {(SKILL.parent / target.partition("#")[0]).resolve() for target in links(text)}
    for reference in sorted(REFERENCES.glob("*.md")):
        assert reference.resolve() in linked, f"SKILL.md never points at {reference.name}"
    expected = {"api.md", "mcp-tools.md", "workflows.md", "hooks.md", "models.md", "troubleshooting.md"}
    assert expected <= {p.name for p in REFERENCES.glob("*.md")}


@pytest.mark.parametrize("path", docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_file_over_300_lines_opens_with_a_contents_list_of_its_sections(path):
    text = path.read_text()
    if len(text.splitlines()) <= 300:
        return
    sections = [title for level, title in headings(text) if level == 2 and title != "Contents"]
    contents = re.search(r"^## Contents\n(.*?)^## ", text, flags=re.DOTALL | re.MULTILINE)
    assert contents, f"{path.name} has {len(text.splitlines())} lines and no '## Contents'"
    listed = set(links(contents.group(1)))
    for title in sections:
        assert f"#{slug(title)}" in listed, f"{path.name}: the contents list leaves out {title!r}"


def test_no_emoji_headings_and_no_shouting():
    for path in docs():
        for _, title in headings(path.read_text()):
            assert title.isascii() or not re.search(r"[\U0001F300-\U0001FAFF\u2600-\u27BF]", title), title
        assert not re.search(r"\b(ALWAYS|NEVER|MUST)\b", outside_code(path.read_text())), path.name


# --- numbers ------------------------------------------------------------------------------------

def quoted_numbers(text: str) -> list[tuple[str, float, int]]:
    """(as written, value, decimals) of each decimal number or percentage in prose (outside code)."""
    found = []
    for match in re.finditer(r"(?<![\w.])([-−+]?\d+\.\d+|\d+%)", outside_code(text)):
        written = match.group(1)
        if written.endswith("%"):
            found.append((written, int(written[:-1]) / 100, 2))
        else:
            number = written.replace("−", "-")
            found.append((written, float(number), len(number.split(".")[1])))
    return found


def test_the_numbers_skill_md_quotes_in_its_workflows_are_measured_in_the_references():
    """SKILL.md's workflow sections quote results; each must be a number a reference prints (and the
    references' printed numbers are checked against live runs), up to the precision SKILL.md gives."""
    measured = [value for ref in sorted(REFERENCES.glob("*.md"))
                for _, value, _ in quoted_numbers(ref.read_text().replace("```", ""))]
    text = SKILL.read_text()
    workflows = "".join(section(text, title) for level, title in headings(text)
                        if level == 2 and title.startswith("Workflow"))
    quoted = quoted_numbers(workflows)
    assert len(quoted) > 20, len(quoted)
    unmeasured = [written for written, value, decimals in quoted
                  if not any(round(m, decimals) == round(value, decimals) for m in measured)]
    assert not unmeasured, f"SKILL.md quotes numbers no reference shows: {unmeasured}"


# --- error messages ------------------------------------------------------------------------------

def documented_messages() -> list[str]:
    rows = table_rows((REFERENCES / "troubleshooting.md").read_text())
    return [code for code in (first_code(row[0]) for row in rows if row) if code]


def real_messages() -> dict[str, str]:
    """The source's messages with some words of their own (not a bare pass-through like f"{path}: {err}")."""
    return {t: where for t, where in source_messages().items() if len(re.sub(r"[^A-Za-z]", "", t)) >= 8}


def test_every_message_quoted_in_troubleshooting_is_still_raised_by_lens():
    templates = list(source_messages())
    stale = [m for m in documented_messages() if not any(message_matches(m, t) for t in templates)]
    assert not stale, f"troubleshooting.md quotes messages no code raises any more: {stale}"


def test_every_message_lens_and_the_server_raise_is_in_troubleshooting():
    documented = documented_messages()
    missing = {t: where for t, where in real_messages().items()
               if not any(message_matches(m, t) for m in documented)}
    assert not missing, "add these to references/troubleshooting.md:\n" + "\n".join(
        f"  {where}: {t}" for t, where in missing.items())


# --- installing --------------------------------------------------------------------------------

def test_the_repository_is_a_claude_code_plugin_with_the_skill_and_the_server():
    manifest = json.loads((ROOT / ".claude-plugin" / "plugin.json").read_text())
    assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", manifest["name"]), manifest["name"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", manifest["version"])
    for skill_dir in manifest["skills"]:
        assert skill_dir.startswith("./") and ".." not in skill_dir, skill_dir
        assert (ROOT / skill_dir / "SKILL.md").exists(), f"{skill_dir} holds no SKILL.md"
    servers = manifest.get("mcpServers", "./.mcp.json")
    if isinstance(servers, str):
        mcp_json = ROOT / servers
        assert mcp_json.exists(), f"the plugin's MCP servers come from {servers}, which does not exist"
        servers = json.loads(mcp_json.read_text())["mcpServers"]
    assert "lens" in servers, servers
    server = servers["lens"]
    command = " ".join([server["command"], *server.get("args", [])])
    assert "mcp_server" in command or "lens-mcp" in command, command
    marketplace = json.loads((ROOT / ".claude-plugin" / "marketplace.json").read_text())
    assert marketplace["owner"]["name"] and re.fullmatch(r"[a-z][a-z0-9-]*", marketplace["name"])
    listed = {entry["name"]: entry["source"] for entry in marketplace["plugins"]}
    assert listed.get(manifest["name"]) == "./", f"marketplace.json must list {manifest['name']!r} at ./: {listed}"
