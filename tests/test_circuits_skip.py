"""Circuit forwards skip the components no circuit reads from this run (lens.hooks.given_outputs): the
attention or MLP whose every outgoing edge reads the reference is not run, its output given from the
reference instead, and the metric is what the full forward gives."""

import pytest
import torch
from conftest import TINY_VARIANTS, max_diff
from test_circuits import answer_metric, make, random_pair

from lens.circuits import Circuit, Graph
from lens.circuits.evaluation import reference_outputs
from lens.circuits.patched import run_circuits
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
def test_a_sparse_circuit_skips_unread_components_and_equals_the_full_forward(variant, ablation):
    model = make(variant)
    graph, pair, metric = Graph.of(model), random_pair(), answer_metric()
    reference = reference_outputs(model, graph, pair, ablation)
    sparse = (~Circuit.from_nodes(graph, ["L1H2", "L2.mlp"]).edges).float()
    both = torch.stack([sparse, torch.zeros_like(sparse)])  # with the whole graph: one forward computes everything
    counts, handles = runs_of(model)
    try:
        alone = run_circuits(model, graph, pair.clean, pair.mask, reference, sparse, metric)
        skipped = dict(counts)
        joint = run_circuits(model, graph, pair.clean, pair.mask, reference, both, metric)
    finally:
        for handle in handles:
            handle.remove()
    assert (alone[0] - joint[0]).abs().max() <= 1e-5, max_diff(alone[0], joint[0])
    # the circuit reads layer 1's heads and layer 2's MLP (and the input) from this run: nothing else runs
    assert {key for key, n in skipped.items() if n} == {(1, "attn"), (2, "mlp")}, skipped
    assert all(counts[key] - skipped[key] == 1 for key in counts)  # the joint forward ran every component once
    assert (joint[1] - joint[0]).abs().max() > 1e-3  # the circuit differs from the whole graph: the test can fail


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
