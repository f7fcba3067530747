"""The features tool: each analysis answers from lens.sae with the same numbers, compactly; bad input is a ToolError."""

import json

import pytest
from test_mcp_support import IOI_CLEAN, IOI_CORRUPTED, run, tiny_model, tiny_server

from lens.patching import logit_diff
from lens.sae import SAE, SAEConfig
from lens.sae.attribution import direct_attribution
from lens.sae.quality import quality


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("features")
    model = tiny_model()
    sae = SAE.random(SAEConfig("standard", 32, 64, "blocks.1.hook_resid_post"), seed=1)
    return model, sae, str(sae.save(tmp / "dictionary")), tiny_server(model, tmp)


def call(server, **arguments):
    async def scenario(client):
        return await client.call_tool("features", arguments)
    return run(server, scenario)


def test_every_analysis_answers_compactly_with_lens_numbers(setup):
    model, sae, folder, server = setup
    calls = {"top": {"prompts": [IOI_CLEAN], "plot": True},
             "quality": {"prompts": [IOI_CLEAN, IOI_CORRUPTED]},
             "contexts": {"prompts": [IOI_CLEAN, IOI_CORRUPTED], "feature": [3]},
             "attribution": {"prompts": [IOI_CLEAN], "answer": " Mary", "baseline": " John"},
             "ablate": {"prompts": [IOI_CLEAN], "feature": [1, 2], "answer": " Mary"},
             "steer": {"prompts": ["When Mary"], "feature": [1], "answer": " Mary", "mode": "clamp"}}
    results = {}
    for analysis, args in calls.items():
        result = call(server, analysis=analysis, dictionary=folder, **args)
        assert not result.is_error, f"{analysis}: {result.content[0].text}"
        results[analysis] = result.structured_content
        assert len(json.dumps(result.structured_content)) < 4096
    assert results["top"]["plot"]["path"].endswith(".png")
    want = quality(model, SAE.load(folder), [IOI_CLEAN, IOI_CORRUPTED])
    assert abs(results["quality"]["numbers"]["ce_loss_recovered"] - want.ce_loss_recovered) < 1e-3
    direct = direct_attribution(model, SAE.load(folder), IOI_CLEAN, " Mary", " John")
    assert abs(results["attribution"]["numbers"]["total"] - direct.total) < 1e-3
    patched = call(server, analysis="attribution", dictionary=folder, prompts=[IOI_CLEAN], corrupted=IOI_CORRUPTED,
                   answer=" Mary", baseline=" John").structured_content
    metric = logit_diff(model, " Mary", " John")
    assert abs(patched["numbers"]["corrupted"] - float(metric(model(IOI_CORRUPTED).detach()))) < 1e-3
    assert model.attached_saes == {}


def test_bad_requests_are_tool_errors_naming_what_to_give(setup):
    _, sae, folder, server = setup
    for args, message in [({"analysis": "contexts", "prompts": ["x"], "dictionary": folder}, "needs feature"),
                          ({"analysis": "top", "prompts": ["x"], "dictionary": "no/such/folder"}, "'default', 'quick'"),
                          ({"analysis": "contexts", "prompts": ["x"], "dictionary": folder, "feature": [999]},
                           "feature 999 is out of range")]:
        result = call(server, **args)
        assert result.is_error and message in result.content[0].text, result.content[0].text
