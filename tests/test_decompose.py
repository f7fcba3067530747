"""Residual decompositions add up: to the residual, to attn_out, and through the final norm to the logits."""

import pytest
import torch
from conftest import TINY_VARIANTS, max_diff

from lens import HookedTransformer

TOKENS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))


def with_random_biases(model):
    """Random biases everywhere, so that no bias term can be forgotten unnoticed."""
    with torch.no_grad():
        for name, p in model.weights.named_parameters():
            if name.startswith("b_") or name.endswith("_b"):
                p.normal_(std=0.1)
    return model


@pytest.fixture(params=list(TINY_VARIANTS))
def model(request):
    return with_random_biases(HookedTransformer.from_config(TINY_VARIANTS[request.param], seed=3))


def test_full_decomposition_sums_to_the_final_residual(model):
    _, cache = model.run_with_cache(TOKENS)
    final = cache["resid_post", -1]
    for expand in (True, False):
        stack, labels = cache.get_full_resid_decomposition(expand_neurons=expand, return_labels=True)
        assert len(labels) == stack.shape[0]
        assert (stack.sum(0) - final).abs().max() <= 1e-4, max_diff(stack.sum(0), final)
    mlp_input = cache.get_full_resid_decomposition(layer=2, mlp_input=True).sum(0)
    expected = cache["resid_pre" if model.cfg.parallel_attn_mlp else "resid_mid", 2]  # what layer 2's MLP reads
    assert (mlp_input - expected).abs().max() <= 1e-4, max_diff(mlp_input, expected)


def test_decompose_resid_sums_to_each_layers_input(model):
    _, cache = model.run_with_cache(TOKENS)
    for layer in range(model.cfg.n_layers + 1):
        total = cache.decompose_resid(layer).sum(0)
        expected = cache["resid_pre", layer] if layer < model.cfg.n_layers else cache["resid_post", -1]
        assert (total - expected).abs().max() <= 1e-5, f"layer {layer}: {max_diff(total, expected)}"
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and labels[-1] == f"{model.cfg.n_layers - 1}_mlp_out"


def test_head_results_sum_to_attn_out_minus_the_bias(model):
    _, cache = model.run_with_cache(TOKENS)
    heads, labels = cache.stack_head_results(return_labels=True)
    H = model.cfg.n_heads
    assert labels[:2] == ["L0H0", "L0H1"] and heads.shape[0] == model.cfg.n_layers * H
    for layer in range(model.cfg.n_layers):
        summed = heads[layer * H:(layer + 1) * H].sum(0) + cache._bias("b_O", layer, None)[0]
        assert (summed - cache["attn_out", layer]).abs().max() <= 1e-5, max_diff(summed, cache["attn_out", layer])


@pytest.mark.parametrize("variant", [k for k, cfg in TINY_VARIANTS.items() if not cfg.post_norms])
def test_head_results_equal_the_on_request_hook_result(variant):
    """(With post-norms hook_result is before ln1_post and the stack after it; the sum test covers that.)"""
    model = with_random_biases(HookedTransformer.from_config(TINY_VARIANTS[variant], seed=3))
    _, cache = model.run_with_cache(TOKENS, names_filter=[("result", 1), ("z", 1)])
    heads = cache._heads(1, None)  # [head, batch, pos, d_model]
    assert (heads - cache["result", 1].permute(2, 0, 1, 3)).abs().max() <= 1e-6


def test_neuron_results_sum_to_mlp_out_minus_the_bias(model):
    _, cache = model.run_with_cache(TOKENS)
    neurons = cache.stack_neuron_results(layer=1)
    summed = neurons.sum(0) + cache._bias("b_out", 0, None)[0]
    assert (summed - cache["mlp_out", 0]).abs().max() <= 1e-5, max_diff(summed, cache["mlp_out", 0])
    part, labels = cache.stack_neuron_results(layer=1, neuron_slice=slice(0, 3), pos_slice=-1, return_labels=True)
    assert labels == ["L0N0", "L0N1", "L0N2"] and part.shape == (3, 2, model.cfg.d_model)  # an int drops pos
    assert torch.allclose(part, neurons[:3, :, -1])
    kept = cache.stack_neuron_results(layer=1, neuron_slice=(0, 3), pos_slice=[-1])  # a tuple is a range
    assert kept.shape == (3, 2, 1, model.cfg.d_model) and torch.allclose(kept, neurons[:3, :, -1:])


def test_logit_attributions_sum_to_the_logit_difference(model):
    logits, cache = model.run_with_cache(TOKENS)
    answer, wrong = 5, 11
    stack = cache.get_full_resid_decomposition(pos_slice=-1)
    attrs = cache.logit_attrs(stack, answer, wrong, pos_slice=-1)  # [component, batch]
    diff = logits[:, -1, answer] - logits[:, -1, wrong]
    # The final norm's bias and b_U are constants no component owns: add them to compare.
    w = model.weights
    constant = (w.b_U[answer] - w.b_U[wrong]).expand(2)
    if model.cfg.norm == "layernorm":
        constant = constant + w.ln_final_b @ (model.W_U[:, answer] - model.W_U[:, wrong])
    total = attrs.sum(0) + constant
    assert (total - diff).abs().max() <= 1e-4, max_diff(total, diff)


def test_accumulated_resid_through_the_final_norm_gives_the_logits(model):
    logits, cache = model.run_with_cache(TOKENS)
    accumulated, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, incl_mid=True, return_labels=True)
    assert labels[0] == "0_pre" and labels[-1] == "final_post"
    final_logits = accumulated[-1] @ model.W_U + model.b_U  # [batch, d_vocab]: pos_slice=-1 drops pos
    assert (final_logits - logits[:, -1]).abs().max() <= 1e-4, max_diff(final_logits, logits[:, -1])
    # Every point is normalised with its own statistics (the logit lens), not the final cached scale.
    for i, label in enumerate(labels[:-1]):
        layer, kind = label.split("_")
        resid = cache[f"resid_{kind}", int(layer)][:, -1]
        expected = model.ln_final(resid)
        assert (accumulated[i] - expected).abs().max() <= 1e-5, f"{label}: {max_diff(accumulated[i], expected)}"


def test_a_batchless_cache_decomposes_too():
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], seed=0)
    _, cache = model.run_with_cache(TOKENS[:1], remove_batch_dim=True)
    stack = cache.get_full_resid_decomposition()
    assert stack.shape[1:] == (7, 32) and (stack.sum(0) - cache["resid_post", -1]).abs().max() <= 1e-4
