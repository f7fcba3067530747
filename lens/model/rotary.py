"""Rotary position embeddings: frequencies (with Llama-3 / linear scaling) and their application.

Follows HF's `ROPE_INIT_FUNCTIONS` and `apply_rotary_pos_emb`: frequencies and
angles in fp32, cos/sin cast to the activation dtype before rotating.
"""

from __future__ import annotations

import math

import torch

from lens.config import RotaryConfig


def inverse_frequencies(rc: RotaryConfig, d_head: int) -> torch.Tensor:
    """[rotary_dim / 2] angular frequency of each rotated pair."""
    dim = rc.dim or d_head
    inv_freq = 1.0 / (rc.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rc.scaling == "linear":
        return inv_freq / rc.factor
    if rc.scaling == "llama3":  # "The Llama 3 Herd of Models", section on long context
        low_wavelen = rc.original_max_positions / rc.low_freq_factor
        high_wavelen = rc.original_max_positions / rc.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rc.factor, inv_freq)
        smooth = (rc.original_max_positions / wavelen - rc.low_freq_factor) / (
            rc.high_freq_factor - rc.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rc.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, style: str, dtype: torch.dtype):
    """cos, sin of shape [batch, pos, 1, rotary_dim] for `positions` [batch, pos]."""
    angles = positions.float()[..., None] * inv_freq.float()  # [batch, pos, dim/2]
    if style == "half":
        angles = torch.cat([angles, angles], dim=-1)
    else:
        angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos().to(dtype)[:, :, None], angles.sin().to(dtype)[:, :, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """Rotate the first rotary_dim features of x [batch, pos, heads, d_head]."""
    dim = cos.shape[-1]
    x_rot, x_pass = x[..., :dim], x[..., dim:]
    if style == "half":
        x1, x2 = x_rot.chunk(2, dim=-1)
        turned = torch.cat([-x2, x1], dim=-1)
    else:  # GPT-J: pairs (0,1), (2,3), ...
        turned = torch.stack([-x_rot[..., 1::2], x_rot[..., 0::2]], dim=-1).flatten(-2)
    rotated = x_rot * cos + turned * sin
    return rotated if x_pass.shape[-1] == 0 else torch.cat([rotated, x_pass], dim=-1)
