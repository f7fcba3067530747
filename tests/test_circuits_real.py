"""Circuit discovery on smollm2-135m with a generated IOI set: the circuit found, its size and faithfulness,
exactness of the whole and empty circuits on a real model, and (printed) how its heads compare with head
patching's."""

import pytest
import torch

from lens import patching
from lens.circuits import Graph, Pair, evaluate, find_circuit
from lens.data import make_dataset
from lens.data.metrics import row_metric


@pytest.mark.real_model
def test_the_ioi_circuit_reaches_its_target_and_the_graph_is_exact_at_both_ends(smollm2):
    ps = make_dataset(smollm2, "ioi", n=20, seed=0)
    metric = row_metric(ps, "logit_diff")
    found = find_circuit(smollm2, ps, metric=metric, method="eap-ig", faithfulness=0.8)
    print(found.summary())
    graph = Graph.of(smollm2)
    f = found.faithfulness
    assert f.value >= 0.8, f
    assert found.circuit.n_edges < graph.n_edges, found.circuit.n_edges
    whole, empty = evaluate(smollm2, [graph.valid, torch.zeros_like(graph.valid)], Pair.of(smollm2, ps), metric)
    assert abs(whole.value - 1) <= 1e-4 and abs(empty.value) <= 1e-4, (whole, empty)
    heads = patching.patch(smollm2, ps, metric=metric, what="heads", progress=False)
    in_circuit = [h.label for h in heads.top if h.label in found.circuit.nodes]
    print(f"head patching's top {len(heads.top)}: {[h.label for h in heads.top]}; in the circuit: {in_circuit}")
