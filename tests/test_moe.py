"""Mixture of experts (Mixtral): router hooks match HF's router, both checkpoint layouts load, processing holds."""

import pytest
import torch
from conftest import max_diff
from safetensors.torch import load_file, save_file

from lens import HookedTransformer

TOKENS = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def mixtral(hf_folder):
    hf, folder = hf_folder("mixtral")
    return hf, folder, HookedTransformer.from_pretrained(str(folder))


def test_router_hooks_match_hf_router(mixtral):
    hf, _, model = mixtral
    with torch.no_grad():
        hf_out = hf(TOKENS, output_router_logits=True)
        _, cache = model.run_with_cache(TOKENS)
    for layer, hf_logits in enumerate(hf_out.router_logits):  # [batch * pos, n_experts]
        ours = cache["router_logits", layer].reshape(-1, 4)
        assert (ours - hf_logits).abs().max() <= 1e-5, max_diff(ours, hf_logits)
        expected = hf_logits.float().softmax(-1).topk(2, dim=-1).indices
        assert torch.equal(cache["expert_indices", layer].reshape(-1, 2), expected)
        weights = cache["expert_weights", layer]
        assert (weights.sum(-1) - 1).abs().max() <= 1e-6 and weights.shape == (2, 10, 2)


def test_a_routing_hook_changes_which_experts_run(mixtral):
    _, _, model = mixtral
    clean = model(TOKENS)
    def experts_0_and_1(indices, hook):
        return torch.tensor([0, 1]).expand_as(indices)

    forced = model.run_with_hooks(TOKENS, fwd_hooks=[(("expert_indices", 1), experts_0_and_1)])
    assert (forced - clean).abs().max() > 1e-4


def test_hub_layout_with_per_expert_weights_loads_the_same(mixtral, tmp_path):
    _, folder, model = mixtral
    fused = load_file(next(folder.glob("*.safetensors")))
    hub = {}
    for key, value in fused.items():
        if ".mlp.experts.gate_up_proj" in key:
            prefix = key.split(".mlp.")[0] + ".block_sparse_moe.experts"
            gate, up = value.chunk(2, dim=1)  # [X, M, D] each
            for e in range(value.shape[0]):
                hub[f"{prefix}.{e}.w1.weight"], hub[f"{prefix}.{e}.w3.weight"] = gate[e].clone(), up[e].clone()
        elif ".mlp.experts.down_proj" in key:
            prefix = key.split(".mlp.")[0] + ".block_sparse_moe.experts"
            for e in range(value.shape[0]):
                hub[f"{prefix}.{e}.w2.weight"] = value[e].clone()
        elif ".mlp.gate.weight" in key:
            hub[key.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = value
        else:
            hub[key] = value
    save_file(hub, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    reloaded = HookedTransformer.from_pretrained(str(tmp_path))
    assert torch.equal(reloaded(TOKENS), model(TOKENS))


def test_processing_keeps_log_softmax_and_neuron_decomposition_is_refused(mixtral):
    _, _, model = mixtral
    before = model(TOKENS).log_softmax(-1)
    model.process_weights(fold_ln=True, center_unembed=True, fold_value_biases=True)
    assert (model(TOKENS).log_softmax(-1) - before).abs().max() <= 1e-4
    _, cache = model.run_with_cache(TOKENS)
    with pytest.raises(ValueError, match="no per-neuron decomposition"):
        cache.get_full_resid_decomposition()
    stack = cache.get_full_resid_decomposition(expand_neurons=False)
    assert (stack.sum(0) - cache["resid_post", -1]).abs().max() <= 1e-4
