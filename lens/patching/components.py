"""Names of model components for path patching and ablation: heads, a head's q/k/v inputs, MLPs, neurons.

Strings as the analyses print them — "L9H6", "L9H6.q" (also .k, .v, .qkv), "L3.mlp", "L3.attn",
"L3N1031", "logits" — or tuples: (9, 6) a head, (9, 6, "q") a head's query, ("mlp", 3), ("attn", 3),
("neuron", 3, 1031).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["head", "mlp", "attn", "neuron", "logits"]
_PATTERNS = [
    (re.compile(r"^L(\d+)H(\d+)(?:\.([qkv]+))?$"), "head"),
    (re.compile(r"^L(\d+)\.(mlp|attn)$"), "layer"),
    (re.compile(r"^L(\d+)N(\d+)$"), "neuron"),
]


@dataclass(frozen=True)
class Component:
    kind: Kind
    layer: int = 0
    index: int | None = None  # the head or neuron
    inputs: str = "qkv"  # for a head as a path-patching receiver: which of its inputs

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.index}" + ("" if self.inputs == "qkv" else f".{self.inputs}")
        if self.kind == "neuron":
            return f"L{self.layer}N{self.index}"
        return "logits" if self.kind == "logits" else f"L{self.layer}.{self.kind}"


def parse(model, spec) -> Component:
    """A Component from a string or tuple (see the module docstring), checked against the model."""
    cfg = model.cfg
    component = _parse(spec)
    if component.kind != "logits" and not 0 <= component.layer < cfg.n_layers:
        raise ValueError(f"{spec!r}: layer {component.layer} does not exist (this model has {cfg.n_layers})")
    limit = {"head": cfg.n_heads, "neuron": cfg.d_mlp}.get(component.kind)
    if limit is not None and not 0 <= component.index < limit:
        raise ValueError(f"{spec!r}: {component.kind} {component.index} does not exist (this model has {limit} "
                         f"per layer)")
    if set(component.inputs) - set("qkv") or not component.inputs:
        raise ValueError(f"{spec!r}: a head's inputs are some of q, k, v, not {component.inputs!r}")
    return component


def _parse(spec) -> Component:
    if isinstance(spec, Component):
        return spec
    if isinstance(spec, str):
        if spec == "logits":
            return Component("logits")
        for pattern, kind in _PATTERNS:
            match = pattern.match(spec)
            if match and kind == "head":
                return Component("head", int(match[1]), int(match[2]), match[3] or "qkv")
            if match and kind == "layer":
                return Component(match[2], int(match[1]))
            if match:
                return Component("neuron", int(match[1]), int(match[2]))
    if isinstance(spec, tuple) and spec and isinstance(spec[0], int) and len(spec) in (2, 3):
        return Component("head", spec[0], spec[1], spec[2] if len(spec) == 3 else "qkv")
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] in ("mlp", "attn"):
        return Component(spec[0], int(spec[1]))
    if isinstance(spec, tuple) and len(spec) == 3 and spec[0] == "neuron":
        return Component("neuron", int(spec[1]), int(spec[2]))
    raise ValueError(f"{spec!r} names no component; write a head 'L9H6' or (9, 6), its query 'L9H6.q', an MLP "
                     f"'L3.mlp', an attention layer 'L3.attn', a neuron 'L3N1031', or 'logits'")


def distinct(components: Sequence[Component], what: str) -> None:
    """A component listed twice would run (or be counted) twice: an error naming it."""
    names = [c.name for c in components]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{what}s {twice} are listed more than once; list each {what} once")
