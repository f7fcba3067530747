"""LayerNorm and RMSNorm with TransformerLens's hook_scale / hook_normalized.

hook_normalized follows TransformerLens: after the weight and bias for
LayerNorm, before the weight for RMSNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lens.config import ModelConfig
from lens.hooks import HookPoint


class Norm(nn.Module):
    """Normalises over the last axis; `w`/`b` are the weights of this norm (views)."""

    def __init__(self, cfg: ModelConfig, kind: str | None = None, offset: float | None = None):
        super().__init__()
        self.kind = kind or cfg.norm
        self.eps = cfg.norm_eps
        self.offset = cfg.norm_weight_offset if offset is None else offset
        self.hook_scale = HookPoint()  # [batch, pos, (head,) 1]
        self.hook_normalized = HookPoint()  # [batch, pos, (head,) d]

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        hooked = self.hook_scale.has_hooks or self.hook_normalized.has_hooks
        if self.kind == "layernorm":
            if not hooked:
                return F.layer_norm(x, x.shape[-1:], w, b, self.eps)
            x = x - x.mean(-1, keepdim=True)
            scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
            return self.hook_normalized(x / scale * w + b)
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
