"""Circuit discovery on smollm2-135m with a generated IOI set filtered to the rows the model gets right: the
circuit found is small, reaches its target faithfulness with a spread that stays clear of chance, holds on
held-out prompts, its curve runs from the empty circuit to the whole graph, the graph is exact at both ends,
and its heads include what head patching ranks highest. (bench/claims.py measures the same on 50 rows for
SKILL.md: 515 edges, faithfulness 0.84 ± 0.03, head patching's top 10 heads all in the circuit.)"""

import pytest
import torch

from lens import patching
from lens.circuits import Graph, Pair, evaluate, find_circuit
from lens.data import make_dataset
from lens.data.metrics import row_metric

N = 20


def right_rows(model, n: int, seed: int):
    ps, report = make_dataset(model, "ioi", n=2 * n, seed=seed).filter(model)
    assert len(ps) >= n, report.summary()
    return ps[list(range(n))]


@pytest.mark.real_model
def test_the_ioi_circuit_is_small_faithful_exact_at_both_ends_and_holds_head_patchings_top_heads(smollm2):
    ps = right_rows(smollm2, N, seed=0)
    metric = row_metric(ps, "logit_diff")
    found = find_circuit(smollm2, ps, metric=metric, method="eap-ig", faithfulness=0.8)
    print(found.summary())
    graph, f, circuit = Graph.of(smollm2), found.faithfulness, found.circuit
    # the target is reached, with a bootstrap interval that stays far from the empty circuit's 0
    assert f.value >= 0.8 and f.n_prompts == N, f
    assert f.low >= 0.6 and f.std <= 0.1, f
    # small: well under 2% of the graph's 70,651 edges, and under a third of its nodes
    assert graph.n_edges == 70651 and circuit.n_edges <= 0.02 * graph.n_edges, circuit.n_edges
    assert len(circuit.nodes) <= (graph.n_senders + 1) / 3, len(circuit.nodes)
    # the curve runs from nothing to everything; the size below the circuit's misses the target
    points = found.curve.points()
    sizes = [e for e, _, _ in points]
    assert sizes == sorted(sizes) and points[-1][0] == graph.n_edges, points
    assert abs(points[-1][1] - 1) <= 1e-4 and points[0][1] <= 0.5, points
    below = [v for e, v, _ in points if e < circuit.n_edges]
    assert below and max(below) < 0.8, points
    # exact at both ends on a real model: the whole graph is the clean run, the empty circuit the corrupted one
    whole, empty = evaluate(smollm2, [graph.valid, torch.zeros_like(graph.valid)], Pair.of(smollm2, ps), metric)
    assert abs(whole.value - 1) <= 1e-4 and abs(empty.value) <= 1e-4, (whole, empty)
    # held out: the same circuit on 20 other prompts still carries most of the logit difference
    held_out = right_rows(smollm2, N, seed=1)
    again = evaluate(smollm2, circuit, Pair.of(smollm2, held_out), row_metric(held_out, "logit_diff"))[0]
    print(f"held out: {again}")
    assert again.value >= 0.6, again
    # head patching's strongest heads are in the circuit
    heads = patching.patch(smollm2, ps, metric=metric, what="heads", progress=False)
    top = [h.label for h in heads.top[:5]]
    in_circuit = [h for h in top if h in circuit.nodes]
    print(f"head patching's top 5: {top}; in the circuit: {in_circuit}")
    assert top[0] in circuit.nodes and len(in_circuit) >= 4, (top, in_circuit)
