"""Automated circuit discovery: the model as a graph of senders and receivers, edge scores (EAP, EAP-IG,
exact edge patching), circuits chosen from them, and their exact faithfulness.

    from lens.circuits import find_circuit
    found = find_circuit(model, clean, corrupted, logit_diff(model, " Mary", " John"), faithfulness=0.8)
    print(found.summary()); found.plot("plots/circuit.png"); found.circuit.save("circuit.json")

The metric is any function of the logits; over a prompt set, lens.data.row_metric(ps, kind) gives one
value per row: "logit_diff", "logit", "prob", "logprob", "kl" (KL(clean || run) at each row's answer
position, lens.data.kl_divergence; 0 on the clean run, so score it with EAP-IG) or "loss" (mean
next-token loss over a span of positions, lens.data.span_loss).

Judging many circuits on one set, one at a time: `base = baseline(model, pair, metric)` runs the reference
and clean forwards once, and `evaluate(model, circuit, pair, metric, base=base)` then runs the circuit only.
"""

from lens.circuits.circuit import Circuit
from lens.circuits.discovery import FoundCircuit, find_circuit
from lens.circuits.evaluation import ABLATIONS, Baseline, Faithfulness, baseline, evaluate
from lens.circuits.graph import Graph
from lens.circuits.prompts import Pair
from lens.circuits.scores import METHODS, EdgeScores, edge_scores
from lens.circuits.selection import Curve, curve, threshold, to_faithfulness, top_n

__all__ = ["ABLATIONS", "METHODS", "Baseline", "Circuit", "Curve", "EdgeScores", "Faithfulness", "FoundCircuit", "Graph",
           "Pair", "baseline", "curve", "edge_scores", "evaluate", "find_circuit", "threshold", "to_faithfulness",
           "top_n"]
