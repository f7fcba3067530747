"""Slice: TransformerLens's way of selecting along one axis, used for pos_slice and neuron_slice.

    None              everything (the axis stays)
    int i             x[i]: the axis is dropped, as TransformerLens does (so pos_slice=-1 gives
                      [component, batch, d_model])
    (stop,), (start, stop), (start, stop, step), or a slice: a range (the axis stays)
    list, tensor or numpy array of indices: those positions (the axis stays)
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

SliceInput = Union[int, tuple, slice, Sequence[int], torch.Tensor, np.ndarray, None]


class Slice:
    """One axis selection; `mode` is 'int', 'slice', 'array' or 'identity'."""

    def __init__(self, input_slice: SliceInput = None):
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        elif isinstance(input_slice, (bool, np.bool_)):
            raise ValueError(f"a slice is an int, a tuple, a slice, a list of indices or None, not {input_slice!r}")
        elif isinstance(input_slice, (int, np.integer)):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, torch.Tensor, np.ndarray)):
            self.slice, self.mode = torch.as_tensor(input_slice).cpu().numpy(), "array"
        else:
            raise ValueError(f"a slice is an int, a tuple, a slice, a list of indices or None, not {input_slice!r}")

    def apply(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """tensor selected along `dim` (negative counts from the end)."""
        if self.mode == "identity":
            return tensor
        index = [slice(None)] * tensor.ndim
        index[dim] = torch.as_tensor(self.slice, device=tensor.device) if self.mode == "array" else self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The indices selected from an axis of length max_ctx (an int needs none)."""
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx is needed to list the indices of a slice that is not an int")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    @classmethod
    def unwrap(cls, slice_input: Slice | SliceInput) -> Slice:
        """A Slice that keeps the axis: an int i becomes [i]."""
        if isinstance(slice_input, Slice):
            return slice_input
        return cls([slice_input] if isinstance(slice_input, (int, np.integer)) else slice_input)

    @property
    def drops_axis(self) -> bool:
        return self.mode == "int"

    def __repr__(self) -> str:
        return f"Slice: {self.slice} Mode: {self.mode} "
