"""The main job: `lens demo` on the default model."""

import io

import pytest

from lens.cli import demo


@pytest.mark.real_model
def test_demo_prints_summary_top_tokens_and_a_row_per_layer(smollm2):
    out = io.StringIO()
    demo("smollm2-135m", out=out)
    text = out.getvalue()
    assert "smollm2-135m (llama)" in text and "30 layers" in text
    top = text.split("top 5 next tokens:")[1].splitlines()[1]
    assert "' Paris'" in top
    table = text.split("logit-lens top token (prob)\n")[1].strip().splitlines()
    assert [int(row.split()[0]) for row in table] == list(range(30))
    assert "' Paris'" in table[-1]
