"""Choosing a circuit from edge scores: the top n edges, a score threshold, or the smallest top-n circuit
that reaches a target faithfulness; then the edges off every input → logits path are pruned."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lens.circuits.circuit import Circuit
from lens.circuits.evaluation import Ablation, Baseline, Faithfulness, baseline, default_sizes, evaluate
from lens.circuits.prompts import Pair
from lens.circuits.scores import EdgeScores


def ranked(scores: EdgeScores) -> torch.Tensor:
    """[n_edges, 2] (sender, receiver) of every edge, largest |score| first."""
    valid = scores.graph.valid
    edges = valid.nonzero()
    order = scores.scores[valid].abs().argsort(descending=True, stable=True)
    return edges[order]


def _circuit(scores: EdgeScores, edges: torch.Tensor, selection: str, prune: bool) -> Circuit:
    g = scores.graph
    mask = torch.zeros(g.n_senders, g.n_receivers, dtype=torch.bool)
    mask[edges[:, 0], edges[:, 1]] = True
    if prune:
        mask = g.prune(mask)
    return Circuit(g, mask, scores.scores, {"method": scores.method, "metric": scores.metric, "selection": selection})


def top_n(scores: EdgeScores, n: int, prune: bool = True) -> Circuit:
    """The n edges of largest |score| (fewer after pruning)."""
    if n < 0:
        raise ValueError(f"n must be at least 0, not {n}")
    return _circuit(scores, ranked(scores)[:n], f"top {n} edges by |score|", prune)


def threshold(scores: EdgeScores, min_score: float, prune: bool = True) -> Circuit:
    """The edges with |score| ≥ min_score."""
    keep = (scores.scores.abs() >= min_score) & scores.graph.valid
    return _circuit(scores, keep.nonzero(), f"|score| >= {min_score:g}", prune)


@dataclass
class Curve:
    """Faithfulness of the top-n circuits (pruned) for several n."""

    sizes: list[int]  # n asked for
    circuits: list[Circuit]
    faithfulness: list[Faithfulness]

    def points(self) -> list[tuple[int, float, float]]:
        """(edges after pruning, faithfulness, its std)."""
        return [(f.n_edges, f.value, f.std) for f in self.faithfulness]


def curve(model, scores: EdgeScores, pair: Pair, metric, sizes=None, ablation: Ablation = "corrupted",
          reference=None, memory_budget: int | None = None, base: Baseline | None = None) -> Curve:
    """The faithfulness-vs-size curve, every size evaluated in the same batched forwards. The clean
    prompts' metric comes from the scores when they were made on this pair with this metric."""
    sizes = default_sizes(scores.graph.n_edges) if sizes is None else sorted(int(s) for s in sizes)
    circuits = [top_n(scores, n) for n in sizes]
    pair = Pair.of(model, pair)
    if base is None:
        base = baseline(model, pair, metric, ablation, reference, scores.clean_rows_for(pair, metric), memory_budget)
    return Curve(sizes, circuits, evaluate(model, circuits, pair, metric, ablation, memory_budget=memory_budget, base=base))


def to_faithfulness(model, scores: EdgeScores, pair: Pair, metric, target: float, ablation: Ablation = "corrupted",
                    reference=None, refine: int = 6, memory_budget: int | None = None) -> tuple[Circuit, Faithfulness, Curve]:
    """The smallest top-n circuit (pruned) whose faithfulness reaches `target`: a batched curve over sizes
    spread geometrically, then bisection between the last size below and the first above (`refine` steps).
    Returns the circuit, its faithfulness and the curve; the whole graph when nothing smaller reaches it."""
    if not 0 < target <= 1.5:
        raise ValueError(f"target faithfulness must be in (0, 1.5], not {target}")
    pair = Pair.of(model, pair)
    base = baseline(model, pair, metric, ablation, reference, scores.clean_rows_for(pair, metric), memory_budget)
    found = curve(model, scores, pair, metric, None, ablation, memory_budget=memory_budget, base=base)
    hits = [i for i, f in enumerate(found.faithfulness) if f.value >= target]
    if not hits:
        whole = top_n(scores, scores.graph.n_edges, prune=False)
        return whole, evaluate(model, whole, pair, metric, ablation, memory_budget=memory_budget, base=base)[0], found
    i = hits[0]
    best = (found.circuits[i], found.faithfulness[i])
    low, high = (found.sizes[i - 1] if i else 0), found.sizes[i]
    for _ in range(refine):
        if high - low <= 1:
            break
        mid = (low + high) // 2
        circuit = top_n(scores, mid)
        value = evaluate(model, circuit, pair, metric, ablation, memory_budget=memory_budget, base=base)[0]
        if value.value >= target:
            high, best = mid, (circuit, value)
        else:
            low = mid
    best[0].meta["selection"] = f"smallest top-n reaching faithfulness {target:g} (n = {high})"
    return best[0], best[1], found
