"""Circuit forwards skip the components no circuit reads from this run (lens.hooks.given_outputs): the
attention or MLP whose every outgoing edge reads the reference is not run, its output given from the
reference instead, and the metric is what the full forward gives."""

import pytest
import torch
from conftest import TINY_VARIANTS, max_diff
from test_circuits import answer_metric, make, random_pair

from lens.circuits import Circuit, Graph, Pair
from lens.circuits.evaluation import baseline, reference_outputs
from lens.circuits.patched import row_metric, run_circuits
from lens.hooks import given_outputs


def runs_of(model) -> tuple[dict, list]:
    """Counts of each block's attention and MLP module calls (torch module hooks, not lens hooks)."""
    counts = {}
    handles = []
    for layer, block in enumerate(model.blocks):
        for part in ("attn", "mlp"):
            counts[layer, part] = 0

            def count(module, args, out, key=(layer, part)):
                counts[key] += 1
            handles.append(getattr(block, part).register_forward_hook(count))
    return counts, handles


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_a_sparse_circuit_runs_only_its_components_and_equals_node_patching(variant, ablation):
    """Nodes L1H2 and L2.mlp: only layer 1's attention and layer 2's MLP run; the metric equals a plain
    forward with every other head's hook_result and MLP's hook_mlp_out patched to the corrupted run's (or
    its mean over the corrupted prompts)."""
    model = make(variant)
    graph, pair, metric = Graph.of(model), random_pair(), answer_metric()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [f"blocks.{layer}.attn.hook_result" for layer in range(L)] + [f"blocks.{layer}.hook_mlp_out" for layer in range(L)]
    with torch.no_grad():
        _, cache = model.run_with_cache(pair.corrupted, names_filter=names)
    patch = {name: cache[name] if ablation == "corrupted" else cache[name].mean(0, keepdim=True) for name in names}

    def heads(x, point):
        x = x.clone()
        out = [h for h in range(H) if (point.layer(), h) != (1, 2)]
        x[:, :, out] = patch[point.name][:, :, out].expand_as(x[:, :, out])
        return x
    hooks = [(f"blocks.{layer}.attn.hook_result", heads) for layer in range(L)]
    hooks += [(f"blocks.{layer}.hook_mlp_out", lambda x, point: patch[point.name].expand_as(x))
              for layer in range(L) if layer != 2]
    positions, per_row = row_metric(metric, pair.clean.shape[1])
    with torch.no_grad():
        expected = per_row(model.run_with_hooks(pair.clean, fwd_hooks=hooks)[None, :, positions])[0]
        clean = per_row(model(pair.clean)[None, :, positions])[0]
    off = (~Circuit.from_nodes(graph, ["L1H2", "L2.mlp"]).edges).float()
    counts, handles = runs_of(model)
    try:
        got = run_circuits(model, graph, pair.clean, pair.mask, reference_outputs(model, graph, pair, ablation),
                           off, metric)[0]
    finally:
        for handle in handles:
            handle.remove()
    assert (got - expected).abs().max() <= 1e-5, max_diff(got, expected)
    # the reference forward ran every component once; the circuit's forward layer 1's attention and layer 2's MLP
    assert {key for key, n in counts.items() if n == 2} == {(1, "attn"), (2, "mlp")}, counts
    assert all(n in (1, 2) for n in counts.values()), counts
    assert (expected - clean).abs().max() > 1e-3  # the patch matters, so the test can fail


def test_given_outputs_refuses_other_points_and_hooks_that_would_never_fire():
    model = make("gpt2_like")
    value = torch.zeros(1, 4, model.cfg.d_model)
    with pytest.raises(ValueError, match="only a block's hook_attn_out or hook_mlp_out"):
        with given_outputs(model, {"blocks.0.hook_resid_post": value}):
            pass
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda x, point: None)]):
        with pytest.raises(ValueError, match=r"would never fire: blocks.1.hook_attn_out is given"):
            with given_outputs(model, {"blocks.1.hook_attn_out": value}):
                pass
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        with given_outputs(model, {"blocks.1.hook_mlp_out": value}):
            given = model(tokens)
        patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, point: value)])
    assert (given - patched).abs().max() <= 1e-6 and model.blocks[1].hook_mlp_out.given is None


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_positions_before_the_first_difference_run_once_and_change_nothing(variant, padded):
    """Clean and corrupted prompts that share their first 4 tokens: the circuits' forwards run positions 4..
    only, attending to the reference run's keys and values, and give what full-length forwards give."""
    model = make(variant)
    graph, metric = Graph.of(model), answer_metric()
    pair = random_pair(4, 9)
    corrupted = pair.corrupted.clone()
    corrupted[:, :4] = pair.clean[:, :4]
    mask = None
    if padded:  # rows of several lengths, padded on the right as prompt sets are (the metric reads the last column)
        mask = torch.ones_like(pair.clean)
        mask[1, -2:] = 0
        mask[3, 2:-1] = 0
    pair = Pair(pair.clean, corrupted, mask)
    assert pair.unchanged() == 4
    base = baseline(model, pair, metric)
    sizes = [graph.valid, torch.zeros_like(graph.valid)] + [
        Circuit.from_nodes(graph, nodes).edges for nodes in (["L1H2", "L2.mlp"], ["L0H0", "L0.mlp", "L2H3"])]
    off = (~torch.stack(sizes)).float()
    lengths = []
    handle = model.blocks[0].register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    try:
        short = run_circuits(model, graph, pair.clean, mask, base.outputs, off, metric, prefix=base.prefix)
        ran = list(lengths)
        full = run_circuits(model, graph, pair.clean, mask, base.outputs, off, metric)
    finally:
        handle.remove()
    assert set(ran) == {5} and set(lengths[len(ran):]) == {9}, lengths
    assert (short - full).abs().max() <= 1e-5, max_diff(short, full)
    assert (short[0] - base.clean).abs().max() <= 1e-5 and (short[1] - base.empty).abs().max() <= 1e-5
    assert (short[2] - short[0]).abs().max() > 1e-3  # a circuit that differs from the whole graph
