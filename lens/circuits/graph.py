"""The model as a graph of senders and receivers, the unit of circuit discovery.

Senders write to the residual stream: the input (the embeddings, `blocks.0.hook_resid_pre`), every
attention head (its term of `hook_attn_out`: `attn.hook_result`; under post-norms its term before the
layer's norm, which receivers apply to their mix of heads: lens.circuits.forward) and every MLP or MoE block (`hook_mlp_out`). Receivers read it: every head's query input and every
key/value input (one per kv head under grouped-query attention), every MLP input, and the logits
(the final residual stream). An edge joins a sender to every receiver after it; within a layer the
heads feed the MLP of a sequential block and not that of a parallel block. A receiver feeds its node (a
query input its head, a key/value input its kv group's heads); where one q/k norm spans all heads
(OLMo-2) a query or key input feeds every head of its layer, since it moves the shared norm scale.

Indices put senders in forward order, so the senders a receiver reads are a prefix of them:
    sender 0 = input; layer l: heads 1 + l (H + 1) + h, MLP 1 + l (H + 1) + H
    receivers of layer l (block of H + 2 H_kv + 1): q heads, k heads, v heads, MLP; then the logits.
Names: senders 'input', 'L3H1', 'L3.mlp'; receivers 'L3H1.q', 'L3H1.k' ('L3KV0.k' under GQA),
'L3.mlp', 'logits'; an edge 'L1H2->L3H1.q'. Node names are the sender names plus 'logits'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

ReceiverKind = Literal["q", "k", "v", "mlp", "logits"]
KINDS: tuple[ReceiverKind, ...] = ("q", "k", "v", "mlp", "logits")


@dataclass(frozen=True)
class Graph:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool  # parallel attention + MLP: a layer's heads do not feed its MLP
    # one q/k norm over all heads' features (OLMo-2): each query (key) input moves every head's query (key)
    # through the shared scale, so it feeds every head of its layer
    joint_qk: bool = False

    @classmethod
    def of(cls, model) -> Graph:
        cfg = model.cfg
        return cls(cfg.n_layers, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, cfg.parallel_attn_mlp,
                   cfg.qk_norm and not cfg.qk_norm_per_head)

    def spec(self) -> dict:
        spec = {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "parallel": self.parallel}
        return spec | ({"joint_qk": True} if self.joint_qk else {})

    # --- senders -------------------------------------------------------------------------

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    def head(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def senders_before(self, layer: int, kind: ReceiverKind) -> int:
        """How many senders (a prefix) a receiver of this kind in this layer reads."""
        if kind == "logits":
            return self.n_senders
        first = 1 + layer * (self.n_heads + 1)
        return first + self.n_heads if kind == "mlp" and not self.parallel else first

    @cached_property
    def sender_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"L{layer}H{h}" for h in range(self.n_heads)] + [f"L{layer}.mlp"]
        return names

    @cached_property
    def sender_layers(self) -> list[int]:
        """The layer of each sender; -1 for the input."""
        return [-1] + [layer for layer in range(self.n_layers) for _ in range(self.n_heads + 1)]

    # --- receivers -----------------------------------------------------------------------

    @property
    def per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.per_layer + 1

    @property
    def logits(self) -> int:
        return self.n_receivers - 1

    def receivers(self, layer: int, kind: ReceiverKind) -> range:
        """The receiver indices of one kind in one layer (q: n_heads, k / v: n_kv_heads, mlp: 1)."""
        if kind == "logits":
            return range(self.logits, self.logits + 1)
        base = layer * self.per_layer
        H, K = self.n_heads, self.n_kv_heads
        start, size = {"q": (0, H), "k": (H, K), "v": (H + K, K), "mlp": (H + 2 * K, 1)}[kind]
        return range(base + start, base + start + size)

    def groups(self) -> list[tuple[int, ReceiverKind, range]]:
        """(layer, kind, receivers) of every receiver hook, in forward order."""
        out = [(layer, kind, self.receivers(layer, kind)) for layer in range(self.n_layers)
               for kind in ("q", "k", "v", "mlp")]
        return out + [(self.n_layers, "logits", self.receivers(0, "logits"))]

    @cached_property
    def receiver_names(self) -> list[str]:
        kv = "H" if self.n_kv_heads == self.n_heads else "KV"
        names = []
        for layer in range(self.n_layers):
            names += [f"L{layer}H{h}.q" for h in range(self.n_heads)]
            names += [f"L{layer}{kv}{g}.{x}" for x in "kv" for g in range(self.n_kv_heads)]
            names.append(f"L{layer}.mlp")
        return names + ["logits"]

    @cached_property
    def receiver_nodes(self) -> list[list[int]]:
        """For each receiver, the nodes it feeds, as sender indices (the logits: [n_senders]): a query input
        its head, a key or value input its group's heads; under a joint q/k norm a query or key input every
        head of its layer."""
        group = self.n_heads // self.n_kv_heads
        out = []
        for layer in range(self.n_layers):
            heads = [self.head(layer, h) for h in range(self.n_heads)]
            kv = [heads[g * group: (g + 1) * group] for g in range(self.n_kv_heads)]
            q = [heads] * self.n_heads if self.joint_qk else [[h] for h in heads]
            out += q + ([heads] * self.n_kv_heads if self.joint_qk else kv) + kv + [[self.mlp(layer)]]
        return out + [[self.n_senders]]

    @cached_property
    def receiver_prefix(self) -> torch.Tensor:
        """[n_receivers] how many senders each receiver reads."""
        prefix = torch.empty(self.n_receivers, dtype=torch.long)
        for layer, kind, rows in self.groups():
            prefix[rows.start:rows.stop] = self.senders_before(layer, kind)
        return prefix

    @cached_property
    def valid(self) -> torch.Tensor:
        """[n_senders, n_receivers] bool: which (sender, receiver) pairs are edges."""
        return torch.arange(self.n_senders)[:, None] < self.receiver_prefix[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    # --- names ---------------------------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        return self.sender_names + ["logits"]

    def node_index(self, name: str) -> int:
        """A node's index (sender index; n_senders for the logits); also takes 'L3.attn'-free forms only."""
        index = self._node_lookup.get(_canonical(name))
        if index is None:
            raise ValueError(f"no node {name!r} in this graph: nodes are 'input', 'L<layer>H<head>' "
                             f"(e.g. 'L{self.n_layers - 1}H0'), 'L<layer>.mlp' and 'logits' "
                             f"({self.n_layers} layers, {self.n_heads} heads)")
        return index

    def edge_index(self, name: str) -> tuple[int, int]:
        """'L1H2->L3H1.q' → (sender, receiver); an edge that does not exist is an error."""
        if "->" not in name:
            raise ValueError(f"an edge is written 'sender->receiver', e.g. 'L0H1->L2H3.q', not {name!r}")
        sender, receiver = (part.strip() for part in name.split("->", 1))
        s = self._sender_lookup.get(_canonical(sender))
        r = self._receiver_lookup.get(_canonical(receiver))
        if s is None or r is None:
            bad = sender if s is None else receiver
            raise ValueError(f"no {'sender' if s is None else 'receiver'} {bad!r} in this graph: senders are "
                             f"'input', 'L<l>H<h>', 'L<l>.mlp'; receivers 'L<l>H<h>.q', "
                             f"'{self.receiver_names[self.n_heads]}', 'L<l>.mlp', 'logits'")
        if not bool(self.valid[s, r]):
            raise ValueError(f"{name!r} is not an edge: {sender} does not come before {receiver}")
        return s, r

    def edge_name(self, s: int, r: int) -> str:
        return f"{self.sender_names[s]}->{self.receiver_names[r]}"

    @cached_property
    def _sender_lookup(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.sender_names)}

    @cached_property
    def _receiver_lookup(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.receiver_names)}

    @cached_property
    def _node_lookup(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.node_names)}

    # --- masks over edges ----------------------------------------------------------------

    def node_mask(self, nodes) -> torch.Tensor:
        """[n_senders, n_receivers] bool: every edge among `nodes` (names or indices), the input and
        the logits always included."""
        keep = torch.zeros(self.n_senders + 1, dtype=torch.bool)
        keep[0] = keep[self.n_senders] = True
        for node in nodes:
            keep[self.node_index(node) if isinstance(node, str) else int(node)] = True
        fed = torch.tensor([bool(keep[nodes_fed].any()) for nodes_fed in self.receiver_nodes])
        return self.valid & keep[: self.n_senders, None] & fed[None, :]

    def edge_mask(self, edges) -> torch.Tensor:
        mask = torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)
        for edge in edges:
            s, r = self.edge_index(edge) if isinstance(edge, str) else edge
            mask[s, r] = True
        return mask

    @cached_property
    def feeds(self) -> torch.Tensor:
        """[n_receivers, n_senders + 1] bool: which nodes each receiver feeds (column n_senders: the logits)."""
        feeds = torch.zeros(self.n_receivers, self.n_senders + 1, dtype=torch.bool)
        for r, nodes in enumerate(self.receiver_nodes):
            feeds[r, nodes] = True
        return feeds

    def prune(self, mask: torch.Tensor) -> torch.Tensor:
        """The edges of `mask` that lie on some path from the input to the logits."""
        mask = mask & self.valid
        S, feeds = self.n_senders, self.feeds
        reached = torch.zeros(S + 1, dtype=torch.bool)
        reached[0] = True
        for node in range(1, S + 1):  # senders are in topological order
            reached[node] = bool((mask[:, feeds[:, node]] & reached[:S, None]).any())
        alive = torch.zeros(S + 1, dtype=torch.bool)
        alive[S] = True
        for node in range(S - 1, -1, -1):
            alive[node] = bool((feeds[mask[node]] & alive).any())
        receiver_alive = (feeds & alive).any(1)  # a kv receiver lives while any head of its group does
        return mask & reached[:S, None] & receiver_alive[None, :]

    def nodes_of(self, mask: torch.Tensor) -> list[str]:
        """The nodes an edge mask touches, in forward order: senders of its edges and the nodes its edges
        feed. A key/value input feeds a group of heads: it names those of them already in, or else all."""
        used = torch.zeros(self.n_senders + 1, dtype=torch.bool)
        used[: self.n_senders] = mask.any(1)
        fed = mask.any(0).nonzero().flatten().tolist()
        for r in fed:
            if len(self.receiver_nodes[r]) == 1:
                used[self.receiver_nodes[r]] = True
        for r in fed:
            group = self.receiver_nodes[r]
            if len(group) > 1 and not used[group].any():
                used[group] = True
        return [self.node_names[i] for i in used.nonzero().flatten().tolist()]


def _canonical(name: str) -> str:
    """'l3h1' / 'L3H1' / 'a3.h1' forms are not guessed: only case and spaces are forgiven."""
    name = name.strip()
    return re.sub(r"^l(\d)", r"L\1", re.sub(r"h(\d)", r"H\1", name)) if name[:1] in "lL" else name
