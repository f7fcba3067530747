"""LayerNorm and RMSNorm with TransformerLens's hook_scale / hook_normalized.

hook_normalized follows TransformerLens 3.x: x / scale, before the weight (and
LayerNorm's bias), so it is the same value with or without fold_ln.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lens.config import ModelConfig
from lens.hooks import HookPoint


class Norm(nn.Module):
    """Normalises over the last axis. Its parameters live in the model's Weights as `{name}_w` /
    `{name}_b` (at index `slot` of their layer axis); `norm(x)` uses them, as `model.ln_final(resid)`."""

    def __init__(self, cfg: ModelConfig, kind: str | None = None, offset: float | None = None,
                 weights=None, name: str | None = None, slot: int | None = None):
        super().__init__()
        self.kind = kind or cfg.norm
        self.eps = cfg.norm_eps
        self.offset = cfg.norm_weight_offset if offset is None else offset
        self.param_name = name
        self.adopt(weights, slot)
        self.hook_scale = HookPoint()  # [batch, pos, (head,) 1]
        self.hook_normalized = HookPoint()  # [batch, pos, (head,) d]

    def adopt(self, weights, slot: int | None) -> None:
        object.__setattr__(self, "weights", weights)  # shared with the model, not a submodule
        self.slot = slot

    def _param(self, suffix: str) -> torch.Tensor | None:
        if self.weights is None or self.param_name is None:
            raise ValueError("this norm is not bound to model weights; pass w (and b) explicitly")
        name = f"{self.param_name}_{suffix}"
        if name not in self.weights._parameters:
            return None
        param = self.weights.stored(name)
        return param if self.slot is None else param[self.slot]

    @property
    def w(self) -> torch.Tensor:
        """[d] the multiplier this norm applies (Gemma's 1 + w: a copy then; else a view)."""
        w = self._param("w")
        return w + self.offset if self.offset else w

    @property
    def b(self) -> torch.Tensor | None:
        """[d] LayerNorm's bias (a view); None for RMSNorm."""
        return self._param("b") if self.kind == "layernorm" else None

    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
        if w is None:  # the norm's own parameters (stored w: the offset is added below)
            w, b = self._param("w"), self.b
        hooked = self.hook_scale.has_hooks or self.hook_normalized.has_hooks
        if self.kind == "layernorm":
            if not hooked:
                return F.layer_norm(x, x.shape[-1:], w, b, self.eps)
            x = x - x.mean(-1, keepdim=True)
            scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
            out = self.hook_normalized(x / scale) * w
            return out if b is None else out + b
        # RMSNorm in fp32 (fp64 stays fp64), cast back before the weight, as HF's Llama/Gemma do.
        wide = torch.promote_types(x.dtype, torch.float32)
        weight = w.to(wide) + self.offset if self.offset else w
        if not hooked and not self.offset:
            return F.rms_norm(x.to(wide), x.shape[-1:], None, self.eps).to(x.dtype) * weight
        x_wide = x.to(wide)
        scale = self.hook_scale((x_wide.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized(x_wide / scale)
        if self.offset:  # Gemma multiplies in fp32 and casts after
            return (normalized * weight).to(x.dtype)
        return normalized.to(x.dtype) * weight
