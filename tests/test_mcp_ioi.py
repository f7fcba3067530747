"""The IOI workflow on SmolLM2-135M through the MCP tools, number for number against the direct lens calls.

SmolLM2 completes 'When Mary and John went to the store, John gave a drink to' with ' Mary'
(p 0.92); the corrupted prompt swaps the second name, and the metric is logit(' Mary') - logit(' John').
"""

import json

import pytest
from test_mcp_support import close, ok, run

from lens import patching
from lens.analysis import direct_logit_attribution
from mcp_server import Settings, create_server

pytestmark = pytest.mark.real_model

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
METRIC = {"answer": " Mary", "baseline": " John"}


def test_the_ioi_workflow_through_the_tools_equals_the_direct_lens_calls(smollm2, tmp_path):
    server = create_server(Settings(out_dir=tmp_path, device="cpu"))

    async def workflow(client):
        steps = {"load_model": await ok(client, "load_model", {"name": "smollm2-135m"})}
        steps["run_with_cache"] = await ok(client, "run_with_cache", {"prompt": CLEAN, "hooks": ["resid_post", "z"],
                                                                      "detail": True})
        steps["logit_attribution"] = await ok(client, "logit_attribution", {"prompt": CLEAN, "by": "head"} | METRIC)
        steps["patch"] = await ok(client, "patch", {"clean": CLEAN, "corrupted": CORRUPTED, "what": "heads"} | METRIC)
        name_movers = [h["label"] for h in steps["patch"]["hotspots"][:3]]
        steps["ablate"] = await ok(client, "ablate", {"prompt": CLEAN, "components": name_movers} | METRIC)
        return steps
    steps = run(server, workflow)
    sizes = {name: len(json.dumps(result)) for name, result in steps.items()}
    assert max(sizes.values()) < 4096, sizes

    cached = steps["run_with_cache"]
    assert cached["top_next"][0]["token"] == " Mary" and close(cached["top_next"][0]["prob"],
                                                              smollm2(CLEAN)[0, -1].softmax(-1).max().item())
    assert sorted(cached["cached"], key=lambda g: g["hook"]) == [
        {"hook": "blocks.{i}.attn.hook_z", "count": 30, "shape": [1, 14, 9, 64]},
        {"hook": "blocks.{i}.hook_resid_post", "count": 30, "shape": [1, 14, 576]}]

    dla = steps["logit_attribution"]
    expected = direct_logit_attribution(smollm2, CLEAN, " Mary", " John", by="head", top_k=10)
    assert close(dla["total"], expected.total), (dla["total"], expected.total)
    assert [c["component"] for c in dla["contributions"]] == [c for c, _ in expected.contributions]
    assert all(close(c["value"], v) for c, (_, v) in zip(dla["contributions"], expected.contributions, strict=True))

    metric = patching.logit_diff(smollm2, " Mary", " John")
    patched = steps["patch"]
    expected = patching.patch(smollm2, CLEAN, CORRUPTED, metric, what="heads", progress=False)
    assert close(patched["clean_value"], expected.clean_value) and close(patched["corrupted_value"], expected.corrupted_value)
    assert [h["label"] for h in patched["hotspots"]] == [h.label for h in expected.top]
    assert all(close(h["normalised"], e.normalised, rel=1e-3) for h, e in zip(patched["hotspots"], expected.top, strict=True))
    assert patched["clean_value"] > 0 > patched["corrupted_value"], "the names swap the prediction"

    name_movers = [h.label for h in expected.top[:3]]
    ablated = steps["ablate"]
    expected = patching.ablate(smollm2, CLEAN, metric, components=name_movers, progress=False)
    assert close(ablated["unablated_value"], expected.baseline)
    assert [h["label"] for h in ablated["hotspots"]] == [h.label for h in expected.top]
    assert all(close(h["score"], e.score) for h, e in zip(ablated["hotspots"], expected.top, strict=True))
