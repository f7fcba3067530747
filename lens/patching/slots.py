"""Where a patch writes: the axes of each hook's activation, and indices into them by axis name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

# The axes of an activation after its batch axis that patches index by (trailing axes are patched whole).
RESID = ("pos",)  # [batch, pos, d_model] (also attn_out, mlp_out, the norms' scale and output)
HEAD_VECTOR = ("pos", "head")  # [batch, pos, head, d_head]: q, k, v, z, rot_q, rot_k; result [.., d_model]
PATTERN = ("head", "pos", "src_pos")  # [batch, head, dest_pos, src_pos]: pattern, attn_scores
NEURON = ("pos", "neuron")  # [batch, pos, d_mlp]: mlp pre, pre_linear, post
FEATURE = ("pos", "feature")  # [batch, pos, d_sae]: a spliced dictionary's features (lens/sae)
LAYOUTS = {"sae_acts_pre": FEATURE, "sae_acts_post": FEATURE, "pattern": PATTERN, "attn_scores": PATTERN, "pre": NEURON, "post": NEURON, "pre_linear": NEURON,
           **{name: HEAD_VECTOR for name in ("q", "k", "v", "z", "result", "rot_q", "rot_k")}}


def layout(hook: str) -> tuple[str, ...]:
    """The leading axes (after batch) of a hook's activation, by its short or full name."""
    return LAYOUTS.get(hook.rsplit("hook_", 1)[-1], RESID)


def pos_axis(hook: str) -> int:
    """The axis of a hook's activation that runs over (query / destination) positions."""
    return 1 + layout(hook).index("pos")


class RowSlot(NamedTuple):
    """A slot whose positions differ by row (a prompt set's named positions): mask [batch, pos] marks each
    row's positions; `rest` indexes the other axes after batch and pos, in order."""

    axis: int  # the activation's position axis
    mask: torch.Tensor  # [batch, pos] bool
    rest: tuple

    def index(self, activation: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """(the activation with positions moved next to batch (a view), the index of the slot in it)."""
        return activation.movedim(self.axis, 1), (self.mask.to(activation.device), *self.rest)

    def indicator(self, activation: torch.Tensor) -> torch.Tensor:
        """A tensor like the activation: 1 in the slot, 0 elsewhere."""
        ones = torch.zeros_like(activation)
        view, where = self.index(ones)
        view[where] = 1
        return ones


def write_slot(source, where: tuple | RowSlot):
    """An edit function writing source[where] (or a number) into the same slot of the activation it gets."""
    def write(activation):
        if isinstance(where, RowSlot):
            view, index = where.index(activation)
            value = source if isinstance(source, (int, float)) else \
                where.index(source.expand_as(activation))[0][index]
            view[index] = value
            return activation
        activation[where] = source if isinstance(source, (int, float)) else source[where]
        return activation
    return write


def slot(axes_of_activation: Sequence[str], index: dict) -> tuple | RowSlot:
    """An index into an activation [batch, ...] fixing the named axes (ints or lists) and keeping the rest whole.
    "pos" may also be a [batch, pos] bool mask (each row its own positions): then a RowSlot."""
    unknown = set(index) - set(axes_of_activation)
    if unknown:
        raise ValueError(f"an activation with axes {list(axes_of_activation)} has no axis {sorted(unknown)}")
    pos = index.get("pos")
    if isinstance(pos, torch.Tensor) and pos.dtype == torch.bool:
        rest = tuple(index.get(axis, slice(None)) for axis in axes_of_activation if axis != "pos")
        return RowSlot(1 + list(axes_of_activation).index("pos"), pos, rest)
    return (slice(None),) + tuple(index.get(axis, slice(None)) for axis in axes_of_activation)
