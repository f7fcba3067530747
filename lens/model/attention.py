"""Multi-head attention with grouped-query heads, rotary, qk-norm, soft-cap and sliding windows.

Uses `scaled_dot_product_attention` unless a hook asks for the scores or the
pattern (or a soft-cap needs them); then it computes them explicitly, with the
softmax in fp32 as HF's eager attention does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lens.config import ModelConfig
from lens.factored import ov_circuit, qk_circuit
from lens.hooks import HookPoint
from lens.model.kv_cache import KVCache
from lens.model.norm import Norm
from lens.model.ops import linear
from lens.model.rotary import rotate
from lens.model.weights import LayerComponent, Weights


@dataclass
class ForwardContext:
    """What every block of one forward pass shares: positions, masks, rotary angles, the KV cache.

    Hooks can read it as `hook.ctx` while they run: `hook.ctx.positions` [batch, pos] are the
    absolute positions of the tokens in this pass (padded rows count from their first real
    token), `hook.ctx.offset` how many earlier positions the KV cache holds.
    """

    positions: torch.Tensor  # [batch, pos]
    key_valid: torch.Tensor | None  # [batch, offset + pos] bool, None when nothing is padded
    offset: int = 0  # positions already in the KV cache; queries are offset .. offset + pos - 1
    kv_cache: KVCache | None = None
    rotary: dict = field(default_factory=dict)  # RotaryConfig -> (cos, sin)
    _masks: dict = field(default_factory=dict)

    def to(self, device, non_blocking: bool = False) -> ForwardContext:
        """This context with its tensors on `device` (a block on another device gets it so,
        from accelerate's dispatch hooks); copies are kept, one per device."""
        device = torch.device(device)
        if self.positions.device == device:
            return self
        copies = self.__dict__.setdefault("_copies", {})
        if device not in copies:
            move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)
            copies[device] = ForwardContext(
                positions=move(self.positions), key_valid=move(self.key_valid), offset=self.offset,
                kv_cache=self.kv_cache, rotary={rc: (move(c), move(s)) for rc, (c, s) in self.rotary.items()})
        return copies[device]

    def mask(self, window: int | None, explicit: bool = False) -> torch.Tensor | None:
        """[batch, 1, pos, k_pos] bool (True = attend). None means plain causal attention
        (sdpa's is_causal for several queries, no mask at all for one query after the cache)
        and is only returned when `explicit` is False."""
        n_q = self.positions.shape[1]
        n_k = self.offset + n_q
        plain = self.key_valid is None and (window is None or window >= n_k)
        if plain and not explicit and (self.offset == 0 or n_q == 1):
            return None
        key = (window, explicit)
        if key not in self._masks:
            device = self.positions.device
            q = torch.arange(self.offset, n_k, device=device)[:, None]
            k = torch.arange(n_k, device=device)[None, :]
            allowed = (k <= q)[None]
            if window is not None:
                allowed = allowed & (q - k < window)
            if self.key_valid is not None:
                # A padding query attends to itself only, so no softmax row is empty.
                allowed = allowed & (self.key_valid[:, None, :] | (k == q)[None])
            self._masks[key] = allowed[:, None]
        return self._masks[key]


class Attention(LayerComponent):
    def __init__(self, cfg: ModelConfig, weights: Weights, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.adopt(weights, layer)
        self.rotary = cfg.layer_rotary(layer) if cfg.positions == "rotary" else None
        self.window = cfg.window(layer)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = Norm(cfg, kind="rmsnorm"), Norm(cfg, kind="rmsnorm")
        self.hook_q = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_k = HookPoint()  # [batch, pos, n_kv_heads, d_head]
        self.hook_v = HookPoint()  # [batch, pos, n_kv_heads, d_head]
        if self.rotary is not None:
            self.hook_rot_q = HookPoint()  # [batch, pos, n_heads, d_head]
            self.hook_rot_k = HookPoint()  # [batch, pos, n_kv_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, n_heads, pos, k_pos]
        self.hook_pattern = HookPoint()  # [batch, n_heads, pos, k_pos]
        self.hook_z = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_result = HookPoint()  # [batch, pos, n_heads, d_model], computed only when hooked

    def W(self, name: str) -> torch.Tensor:
        """This layer's per-head view of a weight: W_Q [n_heads, d_model, d_head], W_O [n_heads, d_head, d_model]."""
        return self.weights.head_view(name)[self.slot]

    W_Q = property(lambda self: self.W("W_Q"))
    W_K = property(lambda self: self.W("W_K"), doc="[n_heads, d_model, d_head], kv heads repeated (GQA)")
    W_V = property(lambda self: self.W("W_V"), doc="[n_heads, d_model, d_head], kv heads repeated (GQA)")
    _W_K = property(lambda self: self.W("_W_K"), doc="[n_kv_heads, d_model, d_head], the stored kv heads")
    _W_V = property(lambda self: self.W("_W_V"), doc="[n_kv_heads, d_model, d_head], the stored kv heads")
    W_O = property(lambda self: self.W("W_O"))
    b_Q = property(lambda self: self.W("b_Q"))
    b_K = property(lambda self: self.W("b_K"))
    b_V = property(lambda self: self.W("b_V"))
    _b_K = property(lambda self: self.W("_b_K"))
    _b_V = property(lambda self: self.W("_b_V"))
    b_O = property(lambda self: self.weights.stored("b_O")[self.slot])
    QK = property(lambda self: qk_circuit(self.W_Q, self._W_K), doc="FactoredMatrix [n_heads, d_model, d_model]")
    OV = property(lambda self: ov_circuit(self._W_V, self.W_O), doc="FactoredMatrix [n_heads, d_model, d_model]")

    def project(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x [batch, pos, d_model] (shared) or [batch, pos, heads, d_model] (per head) → [batch, pos, heads, d_head]."""
        w, b = getattr(self.weights, name)[self.slot], getattr(self.weights, "b" + name[1:])[self.slot]
        if x.dim() == 3:
            return linear(x, w, b).unflatten(-1, (-1, self.cfg.d_head))
        kv = "_" if name in ("W_K", "W_V") else ""  # per-head k/v inputs have n_kv_heads heads
        return torch.einsum("bphd,hde->bphe", x, self.W(kv + name)) + self.W(kv + "b" + name[1:])

    def forward(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        cfg, w = self.cfg, self.weights
        q = self.hook_q(self.project(q_in, "W_Q"))
        k = self.hook_k(self.project(k_in, "W_K"))
        v = self.hook_v(self.project(v_in, "W_V"))
        if cfg.qk_norm and cfg.qk_norm_per_head:
            q = self.q_norm(q, w.q_norm_w[self.slot])
            k = self.k_norm(k, w.k_norm_w[self.slot])
        elif cfg.qk_norm:  # one norm over all heads' features (OLMo-2)
            q = self.q_norm(q.flatten(-2), w.q_norm_w[self.slot]).view_as(q)
            k = self.k_norm(k.flatten(-2), w.k_norm_w[self.slot]).view_as(k)
        if self.rotary is not None:
            cos, sin = ctx.rotary[self.rotary]
            q = self.hook_rot_q(rotate(q, cos, sin, self.rotary.style))
            k = self.hook_rot_k(rotate(k, cos, sin, self.rotary.style))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, heads, pos, d_head]
        if ctx.kv_cache is not None:  # keys and values of every position so far
            k, v = ctx.kv_cache.update(self.layer, k, v)
        explicit = (self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks
                    or cfg.attn_logit_softcap is not None)
        mask = ctx.mask(self.window, explicit)
        if explicit:
            z = self.explicit_attention(q, k, v, mask)
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and q.shape[2] > 1,
                                               scale=1.0 / cfg.scale, enable_gqa=cfg.n_kv_heads != cfg.n_heads)
        z = self.hook_z(z.transpose(1, 2))  # [batch, pos, n_heads, d_head]
        if self.hook_result.has_hooks:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            return result.sum(2) + w.b_O[self.slot]
        return linear(z.flatten(-2), w.W_O[self.slot], w.b_O[self.slot])

    def explicit_attention(self, q, k, v, mask):
        cfg = self.cfg
        group = cfg.n_heads // cfg.n_kv_heads
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        # In-place steps: the cached scores are the only [batch, n_heads, pos, k_pos] buffer made here.
        scores = (q @ k.transpose(-1, -2)).div_(cfg.scale)  # [batch, n_heads, pos, k_pos]
        if cfg.attn_logit_softcap is not None:
            scores = torch.tanh(scores / cfg.attn_logit_softcap) * cfg.attn_logit_softcap
        scores = self.hook_attn_scores(scores.masked_fill_(~mask, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
        return pattern @ v
