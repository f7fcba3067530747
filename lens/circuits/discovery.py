"""find_circuit: edge scores, a selection and the exact faithfulness of what was selected, in one call."""

from __future__ import annotations

from dataclasses import dataclass

from lens.circuits.circuit import Circuit
from lens.circuits.evaluation import Ablation, Faithfulness, baseline, default_sizes, evaluate
from lens.circuits.prompts import Pair
from lens.circuits.scores import EdgeScores, Method, edge_scores
from lens.circuits.selection import Curve, threshold, to_faithfulness, top_n

DEFAULT_EDGES = 100


@dataclass
class FoundCircuit:
    circuit: Circuit
    scores: EdgeScores
    faithfulness: Faithfulness
    curve: Curve

    def summary(self, n_edges: int = 10) -> str:
        f = self.faithfulness
        lines = [f"circuit: {self.circuit.n_edges} edges, {len(self.circuit.nodes)} nodes "
                 f"({self.scores.method}, {self.circuit.meta.get('selection')}); {f}",
                 f"metric {self.scores.metric}: clean {f.clean_value:+.3f}, empty {f.empty_value:+.3f}, "
                 f"circuit {f.circuit_value:+.3f}"]
        lines += [f"  {s}->{r}: {score:+.4f}" for s, r, score in self.circuit.edge_list()[:n_edges]]
        lines.append("curve (edges: faithfulness): " + ", ".join(f"{n}: {v:.2f}" for n, v, _ in self.curve.points()))
        return "\n".join(lines)

    def plot(self, path, max_edges: int = 60):
        from lens.circuits.report import plot_circuit
        return plot_circuit(self.circuit, path, max_edges=max_edges, title=f"{self.circuit.n_edges} edges, "
                            f"faithfulness {self.faithfulness.value:.2f} ± {self.faithfulness.std:.2f}")


def find_circuit(model, prompts, corrupted=None, metric=None, *, method: Method = "eap-ig", steps: int = 5,
                 edges: int | None = None, min_score: float | None = None, faithfulness: float | None = None,
                 ablation: Ablation = "corrupted", curve_sizes=None, memory_budget: int | None = None) -> FoundCircuit:
    """Score every edge (`method`), select a circuit (top `edges`, |score| ≥ `min_score`, or the smallest
    top-n reaching `faithfulness`; default the top 100), prune it, and evaluate it exactly.
    prompts: a Pair, a prompt set, or clean prompts with `corrupted`; metric: a function of the logits."""
    if metric is None:
        raise ValueError("give a metric of the logits, e.g. lens.patching.logit_diff(model, ' Mary', ' John')")
    chosen = [x is not None for x in (edges, min_score, faithfulness)]
    if sum(chosen) > 1:
        raise ValueError("choose the circuit by one of edges=, min_score= or faithfulness=, not several")
    pair = Pair.of(model, prompts, corrupted)
    scores = edge_scores(model, pair, metric, method, steps, memory_budget)
    if faithfulness is not None:
        circuit, value, found_curve = to_faithfulness(model, scores, pair, metric, faithfulness, ablation,
                                                      memory_budget=memory_budget)
    else:
        circuit = threshold(scores, min_score) if min_score is not None else top_n(scores, edges or DEFAULT_EDGES)
        sizes = default_sizes(scores.graph.n_edges) if curve_sizes is None else sorted(int(s) for s in curve_sizes)
        curve_circuits = [top_n(scores, n) for n in sizes]
        base = baseline(model, pair, metric, ablation, clean=scores.clean_rows_for(pair, metric),
                        memory_budget=memory_budget)
        values = evaluate(model, [circuit] + curve_circuits, pair, metric, ablation, memory_budget=memory_budget,
                          base=base)
        value, found_curve = values[0], Curve(sizes, curve_circuits, values[1:])
    circuit.meta["faithfulness"] = value.to_dict()
    return FoundCircuit(circuit, scores, value, found_curve)
