"""A circuit: a set of edges of a model's graph, with the scores it was chosen by, saved as JSON.

JSON format ("lens.circuit/1"):
    {
      "format": "lens.circuit/1",
      "graph": {"n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "parallel": false},  # + "joint_qk": true (OLMo-2)
      "model": "smollm2-135m",                      # informational
      "meta": {"method": "eap-ig", "metric": "...", "selection": "top 200", "faithfulness": {...}},
      "nodes": ["input", "L0H1", ..., "logits"],    # the nodes the edges touch, in forward order
      "edges": [["L0H1", "L2H3.q", -0.0123], ...]   # sender, receiver, score (null without scores),
    }                                               # largest |score| first
Names are those of lens.circuits.graph ('L3H1', 'L3.mlp', 'L3H1.q', 'L3KV0.k', 'logits'). Loading
checks the graph against the model it is used with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lens.circuits.graph import Graph

FORMAT = "lens.circuit/1"


@dataclass
class Circuit:
    graph: Graph
    edges: torch.Tensor  # [n_senders, n_receivers] bool
    scores: torch.Tensor | None = None  # [n_senders, n_receivers] float64, the scores it was chosen by
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_nodes(cls, graph: Graph, nodes, meta: dict | None = None) -> Circuit:
        """Every edge among `nodes` (names like 'L3H1', 'L3.mlp'); the input and logits are always in.
        Evaluated, it equals patching every other node's output with its reference value (heads'
        hook_result, MLPs' hook_mlp_out), post-norm models included (lens.circuits.patched)."""
        return cls(graph, graph.node_mask(nodes), meta=dict(meta or {}, given="nodes"))

    @classmethod
    def from_edges(cls, graph: Graph, edges, meta: dict | None = None) -> Circuit:
        """These edges ('L0H1->L2H3.q' or (sender, receiver) indices), as they are (not pruned)."""
        return cls(graph, graph.edge_mask(edges), meta=dict(meta or {}, given="edges"))

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    @property
    def nodes(self) -> list[str]:
        return self.graph.nodes_of(self.edges)

    def edge_list(self) -> list[tuple[str, str, float | None]]:
        """(sender, receiver, score), largest |score| first (forward order without scores)."""
        pairs = self.edges.nonzero().tolist()
        if self.scores is not None:
            pairs.sort(key=lambda sr: -abs(float(self.scores[sr[0], sr[1]])))
        g = self.graph
        return [(g.sender_names[s], g.receiver_names[r],
                 None if self.scores is None else float(self.scores[s, r])) for s, r in pairs]

    def pruned(self) -> Circuit:
        return Circuit(self.graph, self.graph.prune(self.edges), self.scores, dict(self.meta))

    def check(self, model) -> None:
        if Graph.of(model) != self.graph:
            raise ValueError(f"this circuit is over a graph {self.graph.spec()}; the model's is "
                             f"{Graph.of(model).spec()}: it was found on another model")

    # --- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        def clean(score):
            return None if score is None or not math.isfinite(score) else round(score, 8)
        return {"format": FORMAT, "graph": self.graph.spec(), "model": self.meta.get("model"),
                "meta": {k: v for k, v in self.meta.items() if k != "model"}, "nodes": self.nodes,
                "edges": [[s, r, clean(score)] for s, r, score in self.edge_list()]}

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, data: dict) -> Circuit:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a lens circuit: format is {data.get('format')!r}, expected {FORMAT!r}")
        graph = Graph(**data["graph"])
        edges = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
        scores = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.float64)
        has_scores = False
        for sender, receiver, score in data["edges"]:
            s, r = graph.edge_index(f"{sender}->{receiver}")
            edges[s, r] = True
            if score is not None:
                scores[s, r], has_scores = score, True
        meta = dict(data.get("meta", {}), model=data.get("model"))
        return cls(graph, edges, scores if has_scores else None, meta)

    @classmethod
    def load(cls, path) -> Circuit:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        return f"Circuit({self.n_edges} edges, {len(self.nodes)} nodes)"
