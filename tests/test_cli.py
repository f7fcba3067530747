"""The main job: `lens demo` on the default model."""

import io
import re
from pathlib import Path

import pytest

from lens.cli import demo


@pytest.mark.real_model
def test_demo_prints_summary_top_tokens_a_row_per_layer_and_writes_its_plots(smollm2, tmp_path):
    out = io.StringIO()
    paths = demo("smollm2-135m", out_dir=tmp_path, out=out)
    text = out.getvalue()
    assert "smollm2-135m (llama)" in text and "30 layers" in text
    top = text.split("top 5 next tokens:")[1].splitlines()[1]
    assert "' Paris'" in top
    table = text.split("logit-lens top token (prob)\n")[1].split("\n\n")[0].splitlines()
    assert [int(row.split()[0]) for row in table] == list(range(30))
    assert "' Paris'" in table[-1]
    assert [Path(p).name for p in paths] == ["logit_lens.png", "dla_by_head.png", "induction_heads.png",
                                             "ioi_patch_resid_pre.png", "ioi_patch_heads.png", "ioi_circuit.png",
                                             "features.png"]
    for path in paths:
        assert Path(path).stat().st_size > 10_000 and f"plot: {path}" in text
    assert "induction scores" in text and "direct logit attribution by head" in text
    # the IOI sweep over a generated set: restoring the residual at the second-clause name (early layers) or
    # at the last token (late layers) recovers most of the clean logit difference, on most prompts
    assert "ioi prompt set:" in text and "filter by metric: kept" in text
    sweep = text.split("activation patching of resid_pre (30 layers × 4 positions)")[1].splitlines()
    assert "over" in sweep[0] or "prompts (means)" in text
    assert sweep[2].split()[1:3] in (["@2", "'S2'"], ["@3", "'END'"]), sweep[2]
    assert float(sweep[2].split("(")[-1].split()[0]) > 0.8, sweep[2]  # normalised, ratio of means
    assert "restores" in sweep[3] and "positive on" in sweep[3], sweep[3]
    assert "activation patching of heads (30 layers × 9 heads)" in text
    assert "steering blocks.4.hook_resid_post" in text and "×-3:" in text and "×3:" in text
    # the dictionary section: quality numbers, features per token, a city feature's contexts and its causal check
    assert "dictionary (" in text and "CE loss recovered" in text and "top features of blocks.6.hook_resid_post" in text
    assert "is the most selective for city names" in text and "[[" in text
    effect = re.search(r"clean ([0-9.]+), feature #\d+ ablated ([0-9.]+) .*added ×[0-9.]+ ([0-9.]+)", text)
    clean, ablated, added = map(float, effect.groups())
    assert ablated < clean < added, effect.group(0)
