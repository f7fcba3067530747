"""Exact evaluation of circuits: the metric with every out-of-circuit edge read from the corrupted run (or
from the mean of a reference set), and faithfulness with its spread over the prompts.

    faithfulness = (m(circuit) - m(empty)) / (m(clean) - m(empty))

m being the mean over the prompts; m(empty) is the corrupted run under "corrupted" ablation (the
empty circuit equals it) and the all-mean-ablated run under "mean" ablation. The spread is a
bootstrap over prompts (resampling prompts, 1000 draws, seeded): its standard error and 95% interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lens.circuits.circuit import Circuit
from lens.circuits.forward import sender_outputs
from lens.circuits.graph import Graph
from lens.circuits.patched import run_circuits
from lens.circuits.prompts import Pair
from lens.model.kv_cache import KVCache

Ablation = Literal["corrupted", "mean"]
ABLATIONS: tuple[Ablation, ...] = ("corrupted", "mean")
N_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Faithfulness:
    value: float  # the ratio of means above
    std: float  # bootstrap standard error over prompts
    low: float  # 95% bootstrap interval
    high: float
    n_edges: int
    n_prompts: int
    circuit_value: float  # mean metric with the circuit
    clean_value: float
    empty_value: float  # mean metric with nothing in the circuit
    ablation: str

    def __str__(self) -> str:
        return (f"faithfulness {self.value:.3f} ± {self.std:.3f} (95% CI {self.low:.3f}..{self.high:.3f}; "
                f"{self.n_edges} edges, {self.n_prompts} prompts, {self.ablation} ablation)")

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def bootstrap(circuit: torch.Tensor, clean: torch.Tensor, empty: torch.Tensor,
              seed: int = 0) -> tuple[float, float, float, float]:
    """(ratio of means, bootstrap std, 2.5% and 97.5% quantiles) over prompts; inputs [batch] float64."""
    def ratio(c, k, e):
        return (c.mean(-1) - e.mean(-1)) / (k.mean(-1) - e.mean(-1))
    value = float(ratio(circuit, clean, empty))
    n = len(circuit)
    if n < 2:
        return value, float("nan"), float("nan"), float("nan")
    draws = torch.randint(0, n, (N_BOOTSTRAP, n), generator=torch.Generator().manual_seed(seed))
    samples = ratio(circuit[draws], clean[draws], empty[draws])
    samples = samples[samples.isfinite()]
    low, high = torch.quantile(samples, torch.tensor([0.025, 0.975], dtype=samples.dtype)).tolist()
    return value, float(samples.std()), low, high


def reference_outputs(model, graph: Graph, pair: Pair, ablation: Ablation,
                      reference: Pair | torch.Tensor | None = None, metric=None):
    """What out-of-circuit edges read: the corrupted run's sender outputs [n_senders, batch, pos, d_model],
    or their mean over a reference set's prompts at each position [n_senders, 1, pos, d_model]
    (reference: token ids [n, pos], a Pair (its corrupted prompts), default the pair's corrupted prompts;
    under post-norms the heads' terms before the norm are averaged, and receivers apply the norm).
    With a metric: (outputs, the metric per prompt on the corrupted prompts [batch])."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, not {ablation!r}")
    if ablation == "corrupted":
        if reference is not None:
            raise ValueError("a reference set is for ablation='mean'; corrupted ablation reads the pair's "
                             "corrupted prompts")
        return sender_outputs(model, graph, pair.corrupted, pair.mask, metric)
    if reference is None:
        tokens, mask = pair.corrupted, pair.mask
    elif isinstance(reference, Pair):
        tokens, mask = reference.corrupted, reference.mask
    else:
        tokens, mask = torch.as_tensor(reference).to(model.device), None
    if tokens.shape[1] != pair.clean.shape[1]:
        raise ValueError(f"the mean-ablation reference has {tokens.shape[1]} positions and the prompts "
                         f"{pair.clean.shape[1]}; the mean is taken position by position, so they must match")
    outputs = sender_outputs(model, graph, tokens, mask)  # [S, n, pos, d_model]
    weight = torch.ones(tokens.shape, dtype=outputs.dtype, device=outputs.device) if mask is None \
        else mask.to(outputs.dtype)
    mean = (outputs * weight[None, :, :, None]).sum(1, keepdim=True) / weight.sum(0).clamp(min=1)[None, None, :, None]
    return mean if metric is None else (mean, pair.row_values(model, metric, which="corrupted")[1])


@dataclass
class Baseline:
    """What judging circuits on one pair reads every time: the outputs out-of-circuit edges read
    ([n_senders, batch or 1, pos, d_model]) and the metric per prompt ([batch] float64) on the clean prompts
    and with nothing in the circuit. Made once (`baseline`), it serves any number of evaluations."""

    outputs: torch.Tensor
    clean: torch.Tensor
    empty: torch.Tensor
    ablation: str
    # (n, the reference run's keys and values): its first n positions equal this run's (run_circuits' prefix)
    prefix: tuple[int, KVCache] | None = None


def baseline(model, pair: Pair, metric, ablation: Ablation = "corrupted", reference=None,
             clean: torch.Tensor | None = None, memory_budget: int | None = None) -> Baseline:
    """The Baseline of a pair (or prompt set): one forward on the corrupted (or reference) prompts, one on the clean ones
    unless their metric per prompt is given (`clean`, e.g. EdgeScores.clean_rows_for); under mean ablation
    the empty circuit's metric from a forward that computes nothing but the embeddings and the logits."""
    graph, pair = Graph.of(model), Pair.of(model, pair)
    prefix = None
    if ablation == "corrupted":
        if reference is not None:
            raise ValueError("a reference set is for ablation='mean'; corrupted ablation reads the pair's "
                             "corrupted prompts")
        kv = KVCache(model.cfg, len(pair), pair.clean.shape[1], model.dtype, model.device)
        outputs, empty = sender_outputs(model, graph, pair.corrupted, pair.mask, metric, kv=kv)
        prefix = (pair.unchanged(), kv)
    else:
        outputs = reference_outputs(model, graph, pair, ablation, reference)
        everything = torch.ones(1, graph.n_senders, graph.n_receivers)
        empty = run_circuits(model, graph, pair.clean, pair.mask, outputs, everything, metric, memory_budget)[0]
    if clean is None:
        clean = pair.row_values(model, metric, which="clean")[0]
    return Baseline(outputs, clean, empty, ablation, prefix)


def _masks(graph: Graph, circuits) -> torch.Tensor:
    """Circuits, edge masks [S, R] or [C, S, R], or node-name lists → bool [C, S, R]."""
    if isinstance(circuits, (Circuit, torch.Tensor)) or (
            isinstance(circuits, (list, tuple)) and circuits and isinstance(circuits[0], str)):
        circuits = [circuits]
    masks = []
    for c in circuits:
        if isinstance(c, Circuit):
            if c.graph != graph:
                raise ValueError(f"a circuit over graph {c.graph.spec()} cannot run on a model with {graph.spec()}")
            masks.append(c.edges)
        elif isinstance(c, torch.Tensor):
            masks.extend(c if c.dim() == 3 else [c])
        else:
            names = list(c)
            edges = [n for n in names if "->" in n]
            masks.append(graph.edge_mask(edges) if edges and len(edges) == len(names) else graph.node_mask(names))
    return torch.stack([m.bool() for m in masks])


def evaluate(model, circuits, pair: Pair, metric, ablation: Ablation = "corrupted",
             reference=None, memory_budget: int | None = None, base: Baseline | None = None) -> list[Faithfulness]:
    """Faithfulness of each circuit (a Circuit, an edge mask, a list of node names or of 'a->b' edges),
    all evaluated in batched forwards. pair: a Pair or a prompt set. base: the pair's Baseline under this
    metric and ablation, when it is already made (default: made here)."""
    pair = Pair.of(model, pair)
    graph = Graph.of(model)
    masks = _masks(graph, circuits)
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, not {ablation!r}")
    if base is None:
        base = baseline(model, pair, metric, ablation, reference, memory_budget=memory_budget)
    elif base.ablation != ablation:
        raise ValueError(f"this baseline is for {base.ablation} ablation, not {ablation}")
    # the whole graph is the clean run and the empty circuit the baseline's (tests/test_circuits.py): read them off
    edges = (masks & graph.valid).flatten(1).sum(1)
    ends = {graph.n_edges: base.clean, 0: base.empty}
    inner = [i for i, n in enumerate(edges.tolist()) if n not in ends]
    values = torch.stack([ends.get(int(n), base.clean) for n in edges])
    if inner:
        values[inner] = run_circuits(model, graph, pair.clean, pair.mask, base.outputs,
                                     (~masks[inner]).to(torch.float32), metric, memory_budget, base.prefix)
    out = []
    for mask, row in zip(masks, values, strict=True):
        value, std, low, high = bootstrap(row, base.clean, base.empty)
        out.append(Faithfulness(value, std, low, high, int((mask & graph.valid).sum()), len(pair),
                                float(row.mean()), float(base.clean.mean()), float(base.empty.mean()), ablation))
    return out


def default_sizes(n_edges: int, n: int = 10) -> list[int]:
    """n sizes spread geometrically from 1 to n_edges."""
    sizes = torch.logspace(0, torch.log10(torch.tensor(float(n_edges))), n).round().long().unique().tolist()
    return sorted(set(sizes))
