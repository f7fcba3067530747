"""EAP and EAP-IG take each query, key and value input's gradient from the gradient at its head's projection,
through the weights and the layer's pre-norm (lens.circuits.forward.head_input_grads), so the layer runs on
one shared residual stream. Here the scores equal those from the gradients at per-head copies of the
attention input (hook_q_input / hook_k_input / hook_v_input), computed independently of lens's gradient pass,
on every tiny family (GQA, parallel blocks, a shared norm, LayerNorm, post-norms with a joint q/k norm and no
pre-norm, Gemma's weight offset), in fp64 and fp32."""

import pytest
import torch
from conftest import TINY_VARIANTS, max_diff
from test_circuits import answer_metric, make, random_pair

from lens.circuits import Graph, Pair, edge_scores
from lens.circuits.forward import as_shares, graph_hooks, post_norm_jvp, sender_outputs
from lens.circuits.patched import row_metric


def sender_differences(model, graph: Graph, pair: Pair, method: str) -> torch.Tensor:
    """[n_senders, batch, pos, d_model]: corrupted - clean sender outputs as each method takes them (EAP-IG:
    shares of the normed attention output under post-norms; EAP: the difference through the post-norm's
    derivative at the clean run)."""
    corrupted, clean = (sender_outputs(model, graph, tokens, pair.mask) for tokens in (pair.corrupted, pair.clean))
    if method == "eap-ig":
        return as_shares(model, graph, corrupted) - as_shares(model, graph, clean)
    delta = corrupted - clean
    if model.cfg.post_norms:
        for layer in range(graph.n_layers):
            heads = slice(graph.head(layer, 0), graph.head(layer, 0) + graph.n_heads)
            change = post_norm_jvp(model, layer, clean[heads].sum(0), delta[heads].permute(1, 2, 0, 3))
            delta[heads] = change.permute(2, 0, 1, 3)
    return delta


def per_head_copy_scores(model, pair: Pair, metric, method: str, steps: int = 5) -> torch.Tensor:
    """The scores from the gradients at per-head copies of every receiver's input: one forward over the
    interpolated inputs (EAP: the clean input), autograd to every copy, Σ delta · gradient in float64."""
    graph = Graph.of(model)
    batch, n_pos = pair.clean.shape
    positions, per_row = row_metric(metric, n_pos)
    delta = sender_differences(model, graph, pair, method).double()
    copies = steps if method == "eap-ig" else 1
    inputs, received, keep = {}, [], {}
    start = sender_outputs(model, graph, pair.corrupted, pair.mask)[0]  # the corrupted run's embeddings

    def leaf(x, point):
        if method == "eap-ig":
            end = x.detach()[:batch]
            alphas = ((torch.arange(steps, dtype=torch.float64) + 0.5) / steps).to(x.dtype).view(-1, 1, 1, 1)
            x = (start[None] + alphas * (end - start)[None]).flatten(0, 1)
        inputs["leaf"] = x.detach().requires_grad_(True)
        return inputs["leaf"]

    def on_receiver(layer, kind, rows, x):
        y = x.clone()
        received.append((rows, y))
        return y

    hooks = [("blocks.0.hook_resid_pre", leaf)] + graph_hooks(model, graph, on_receiver=on_receiver)
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", lambda x, point: keep.update(resid=x)))
    mask = None if pair.mask is None else pair.mask.repeat(copies, 1)
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        model(pair.clean.repeat(copies, 1), attention_mask=mask, return_type=None)
        resid = keep["resid"] if positions is None else keep["resid"][:, positions]
        values = per_row(model.final_logits(resid).view(copies, batch, -1, model.cfg.d_vocab))
        grads = torch.autograd.grad(values.sum() / (batch * copies), [y for _, y in received])
    scores = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.float64)
    for (rows, _), grad in zip(received, grads, strict=True):
        grad = grad.double().view(copies, batch, n_pos, len(rows), -1).sum(0)  # [batch, pos, n, d_model]
        scores[:, rows.start: rows.stop] = torch.einsum("sbpd,bpnd->sn", delta, grad)
    return scores * graph.valid


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_scores_equal_those_from_per_head_copies_of_the_attention_input(variant, method, dtype, tolerance):
    """|Δ| ≤ tolerance × max |score|. Measured: fp64 ≤ 3.4e-15 relative, fp32 ≤ 1.4e-6."""
    model = make(variant, dtype)
    pair = random_pair(3, n_pos=6, seed=1)
    if variant == "llama_like":  # a padded row too
        mask = torch.ones_like(pair.clean)
        mask[0, -2:] = 0
        pair = Pair(pair.clean, pair.corrupted, mask)
    metric = answer_metric()
    got = edge_scores(model, pair, metric, method, steps=4).scores
    assert all(p.requires_grad for p in model.parameters())  # the pass turns weight gradients off, then back on
    expected = per_head_copy_scores(model, pair, metric, method, steps=4)
    graph = Graph.of(model)
    attention = torch.tensor([kind in "qkv" for _, kind, rows in graph.groups() for _ in rows])
    assert expected[:, attention].abs().max() > 1e-3  # the attention receivers' scores are not all 0
    error = (got - expected).abs().max() / expected.abs().max()
    print(f"{variant} {method} {dtype}: relative max |Δ| {error:.2e}")
    assert error <= tolerance, max_diff(got, expected)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_positions_before_the_first_difference_are_run_once_and_the_scores_stay_exact(variant, method):
    """Clean and corrupted prompts sharing their first 3 tokens: the methods run positions 3.. only, on the
    shared positions' keys and values (every sender's difference is 0 there); the scores equal the
    full-length per-head-copy scores in fp64 (llama_like with a padded row)."""
    model = make(variant, torch.float64)
    pair = random_pair(3, n_pos=7, seed=2)
    corrupted = pair.corrupted.clone()
    corrupted[:, :3] = pair.clean[:, :3]
    mask = None
    if variant == "llama_like":
        mask = torch.ones_like(pair.clean)
        mask[0, 4:-1] = 0
    pair = Pair(pair.clean, corrupted, mask)
    metric = answer_metric()
    lengths = []
    handle = model.blocks[0].register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    try:
        got = edge_scores(model, pair, metric, method, steps=4).scores
    finally:
        handle.remove()
    assert sorted(set(lengths)) == [3, 4], lengths  # the shared prefix once, then positions 3..6
    expected = per_head_copy_scores(model, pair, metric, method, steps=4)
    error = (got - expected).abs().max() / expected.abs().max()
    assert error <= 1e-10, max_diff(got, expected)
