"""Circuit discovery with metrics of the whole next-token distribution (lens.data.kl_divergence, span_loss):
the metrics equal their hand computation, EAP is their gradient, and the exact evaluation's ends hold."""

import pytest
import torch
from conftest import max_diff
from test_circuits import edge_steps, make

from lens.circuits import Graph, Pair, edge_scores, evaluate
from lens.circuits.forward import sender_outputs
from lens.circuits.patched import run_circuits
from lens.data import PromptSet, kl_divergence, span_loss

LENGTHS = [7, 5, 7, 6]  # rows of different lengths: a right-padded batch


def ragged_set(model, seed=0) -> PromptSet:
    g = torch.Generator().manual_seed(seed)
    clean = [torch.randint(0, 50, (n,), generator=g).tolist() for n in LENGTHS]
    corrupted = [torch.randint(0, 50, (n,), generator=g).tolist() for n in LENGTHS]
    return PromptSet.from_lists(model, clean=clean, corrupted=corrupted, answer=3, baseline=5)


def metrics(model, ps) -> dict:
    with torch.no_grad():
        corrupted_end = model(ps.corrupted_tokens)[torch.arange(len(ps)), ps.positions["END"]]
    return {"kl": kl_divergence(model, ps), "kl to the corrupted run": kl_divergence(model, ps, reference=corrupted_end),
            "loss over each row": span_loss(ps), "loss over a span": span_loss(ps, (2, -2))}


def test_kl_and_span_loss_equal_their_hand_computation_row_by_row():
    model = make("llama_like", torch.float64)
    ps = ragged_set(model)
    kl, loss, span = kl_divergence(model, ps), span_loss(ps), span_loss(ps, (2, -2))
    with torch.no_grad():
        clean, corrupted = model(ps.clean_tokens), model(ps.corrupted_tokens)
    for row, n in enumerate(LENGTHS):
        with torch.no_grad():  # each row alone, unpadded
            alone, alone_corrupted = model(ps.clean_tokens[row:row + 1, :n])[0], model(ps.corrupted_tokens[row:row + 1, :n])[0]
        p, q = alone[-1].log_softmax(-1), alone_corrupted[-1].log_softmax(-1)
        expected_kl = float((p.exp() * (p - q)).sum())
        targets = ps.clean_tokens[row, 1:n]
        expected_loss = torch.nn.functional.cross_entropy(alone[:-1], targets, reduction="none")
        assert abs(float(kl.rows(corrupted)[row]) - expected_kl) <= 1e-9
        assert abs(float(kl.rows(clean)[row])) <= 1e-12  # the clean run against itself
        assert abs(float(loss.rows(clean)[row]) - float(expected_loss.mean())) <= 1e-9
        assert abs(float(span.rows(clean)[row]) - float(expected_loss[2:n - 1].mean())) <= 1e-9
        assert expected_kl > 1e-3
    positions, restricted = span.restrict(ps.n_pos)
    assert positions == [2, 3, 4, 5] and (restricted.rows(clean[:, positions]) - span.rows(clean)).abs().max() <= 1e-12


@pytest.mark.parametrize("variant", ["llama_like", "gemma_like"])
def test_eap_is_the_fp64_directional_derivative_of_kl_and_span_loss(variant):
    model = make(variant, torch.float64)
    ps = ragged_set(model)
    graph, pair = Graph.of(model), Pair.of(model, ps)
    sample, off, eps = edge_steps(graph, 8)
    reference = sender_outputs(model, graph, pair.corrupted, pair.mask)
    for name, metric in metrics(model, ps).items():
        values = run_circuits(model, graph, pair.clean, pair.mask, reference, off, metric).mean(1)
        derivative = (values[0::2] - values[1::2]) / (2 * eps)
        if name == "kl":  # KL(clean || run) is flat at the clean run: EAP is refused, the derivative is 0
            assert derivative.abs().max() <= 1e-6, (name, derivative)
            with pytest.raises(ValueError, match="method='eap-ig'"):
                edge_scores(model, ps, metric, "eap")
            assert edge_scores(model, ps, metric, "eap-ig").scores.abs().max() > 1e-4
            continue
        got = edge_scores(model, ps, metric, "eap").scores[sample[:, 0], sample[:, 1]]
        assert (got - derivative).abs().max() <= 1e-7 + 1e-5 * derivative.abs().max(), (name, max_diff(got, derivative))
        assert derivative.abs().max() > 1e-4, name


@pytest.mark.parametrize("variant", ["gpt2_like", "llama_like", "parallel", "gemma_like"])
def test_whole_graph_is_the_clean_run_and_empty_circuit_the_corrupted_run_for_kl_and_span_loss(variant):
    model = make(variant)
    ps = ragged_set(model)
    graph, pair = Graph.of(model), Pair.of(model, ps)
    for name, metric in metrics(model, ps).items():
        clean, corrupted = pair.row_values(model, metric)
        whole, empty = evaluate(model, [graph.valid, torch.zeros_like(graph.valid)], pair, metric)
        assert abs(whole.circuit_value - float(clean.mean())) <= 1e-5, (name, whole)
        assert abs(empty.circuit_value - float(corrupted.mean())) <= 1e-5, (name, empty)
        assert abs(whole.value - 1) <= 1e-4 and abs(empty.value) <= 1e-4, (name, whole.value, empty.value)
        assert abs(float(clean.mean()) - float(corrupted.mean())) > 1e-2, name  # the ends differ: the test can fail
        if name == "kl":
            assert abs(whole.clean_value) <= 1e-6  # KL of the clean run against itself
