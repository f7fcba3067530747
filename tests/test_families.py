"""Every family equals the HF eager implementation, fp32, on tiny random weights loaded from a folder."""

import pytest
import torch
from conftest import max_diff
from hf_models import CONFIGS, layer_outputs

from lens import HookedTransformer, supported_families

TOL = 1e-4


@pytest.mark.parametrize("family", list(CONFIGS))
def test_logits_and_every_residual_match_hf(family, hf_folder):
    hf, folder = hf_folder(family)
    model = HookedTransformer.from_pretrained(str(folder), device="cpu")
    tokens = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    hf_logits, hf_resids = layer_outputs(hf, tokens)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    diff = (logits.log_softmax(-1) - hf_logits.log_softmax(-1)).abs().max()
    assert diff <= TOL, f"{family}: log_softmax {max_diff(logits.log_softmax(-1), hf_logits.log_softmax(-1))}"
    assert len(hf_resids) == model.cfg.n_layers
    for layer, hf_resid in enumerate(hf_resids):
        assert (cache["resid_post", layer] - hf_resid).abs().max() <= TOL, \
            f"{family} layer {layer}: {max_diff(cache['resid_post', layer], hf_resid)}"


@pytest.mark.parametrize("family", list(CONFIGS))
def test_left_padded_batch_matches_hf_and_each_prompt_alone(family, hf_folder):
    hf, folder = hf_folder(family)
    model = HookedTransformer.from_pretrained(str(folder), device="cpu")
    gen = torch.Generator().manual_seed(1)
    long, short = torch.randint(3, 96, (10,), generator=gen), torch.randint(3, 96, (6,), generator=gen)
    tokens = torch.stack([long, torch.cat([torch.zeros(4, dtype=torch.long), short])])
    mask = torch.tensor([[1] * 10, [0] * 4 + [1] * 6])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hf_logits, hf_resids = layer_outputs(hf, tokens, attention_mask=mask, position_ids=positions)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, attention_mask=mask,
                                             names_filter=lambda n: n.endswith("hook_resid_post"))
        alone = model(short[None])
    real = mask.bool()
    ours, theirs = logits.log_softmax(-1)[real], hf_logits.log_softmax(-1)[real]
    assert (ours - theirs).abs().max() <= TOL, f"{family} padded: {max_diff(ours, theirs)}"
    for layer, hf_resid in enumerate(hf_resids):
        assert (cache["resid_post", layer][real] - hf_resid[real]).abs().max() <= TOL, f"{family} layer {layer}"
    padded_row = logits[1, 4:].log_softmax(-1)
    assert (padded_row - alone[0].log_softmax(-1)).abs().max() <= TOL, \
        f"{family}: padded prompt vs alone {max_diff(padded_row, alone[0].log_softmax(-1))}"


def test_supported_families_name_every_model_type_and_how_it_was_verified():
    families = supported_families()
    model_types = {t for f in families for t in f["model_types"]}
    assert set(CONFIGS) - {"gpt_neox_sequential", "llama3_rope", "llama_tied"} == model_types
    assert all("HF" in f["verified"] for f in families)
