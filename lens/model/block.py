"""A transformer block: attention and MLP, sequential or parallel, with optional post-norms."""

from __future__ import annotations

import torch

from lens.config import ModelConfig
from lens.hooks import HookPoint
from lens.model.attention import Attention, ForwardContext
from lens.model.mlp import MLP
from lens.model.moe import MoE
from lens.model.norm import Norm
from lens.model.weights import LayerComponent, Weights


class Block(LayerComponent):
    def __init__(self, cfg: ModelConfig, weights: Weights, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.adopt(weights, layer)
        if cfg.pre_norms:
            self.ln1 = Norm(cfg, weights=weights, name="ln1", slot=layer)
        self.has_mlp = not cfg.attn_only  # TransformerLens's attention-only toy models have no MLP
        if cfg.pre_norms and not cfg.shared_norm and self.has_mlp:
            self.ln2 = Norm(cfg, weights=weights, name="ln2", slot=layer)
        self.mlp_norm = "ln1" if cfg.shared_norm else "ln2"
        if cfg.post_norms:
            self.ln1_post = Norm(cfg, weights=weights, name="ln1_post", slot=layer)
            self.ln2_post = Norm(cfg, weights=weights, name="ln2_post", slot=layer)
        self.attn = Attention(cfg, weights, layer)
        if self.has_mlp:
            self.mlp = MoE(cfg, weights, layer) if cfg.n_experts else MLP(cfg, weights, layer)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        # Per-head copies of the attention input, built only when hooked (TransformerLens's
        # use_attn_in / use_split_qkv_input), pre-norm: [batch, pos, n_heads | n_kv_heads, d_model].
        self.hook_attn_in = HookPoint()
        self.hook_q_input = HookPoint()
        self.hook_k_input = HookPoint()
        self.hook_v_input = HookPoint()
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if self.has_mlp and not cfg.parallel_attn_mlp:
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        if self.has_mlp:
            self.hook_mlp_in = HookPoint()  # [batch, pos, d_model], pre-norm
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, name):  # OLMo-2 has no pre-norms: the block reads the residual as it is
            return x
        w = self.weights
        bias = getattr(w, f"{name}_b")[self.slot] if self.cfg.norm == "layernorm" else None
        return getattr(self, name)(x, getattr(w, f"{name}_w")[self.slot], bias)

    def attention_inputs(self, resid_pre: torch.Tensor):
        """Normalised query, key and value inputs: shared [batch, pos, d_model] unless per-head hooks ask."""
        per_head = (self.hook_attn_in, self.hook_q_input, self.hook_k_input, self.hook_v_input)
        if not any(point.has_hooks for point in per_head):
            x = self.norm("ln1", resid_pre)
            return x, x, x
        cfg = self.cfg
        attn_in = self.hook_attn_in(resid_pre[:, :, None].expand(-1, -1, cfg.n_heads, -1).clone())
        # A key/value head is shared by a group of query heads; it reads its group's first head.
        kv_in = attn_in[:, :, :: cfg.n_heads // cfg.n_kv_heads]
        k_in = self.hook_k_input(kv_in.clone())
        v_in = self.hook_v_input(kv_in.clone())
        q_in = self.hook_q_input(attn_in)
        return self.norm("ln1", q_in), self.norm("ln1", k_in), self.norm("ln1", v_in)

    def forward(self, resid_pre: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out.given  # a value given from outside skips the attention (hooks.given_outputs)
        if attn_out is None:
            attn_out = self.attn(*self.attention_inputs(resid_pre), ctx)
            if self.cfg.post_norms:
                attn_out = self.norm("ln1_post", attn_out)
        attn_out = self.hook_attn_out(attn_out)
        if not self.has_mlp:
            return self.hook_resid_post(resid_pre + attn_out)
        if self.cfg.parallel_attn_mlp:
            mlp_in = resid_pre
        else:
            mlp_in = resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out.given
        if mlp_out is None:
            if self.hook_mlp_in.has_hooks:  # a copy, so an in-place edit of it leaves the residual alone
                mlp_in = self.hook_mlp_in(mlp_in.clone())
            mlp_out = self.mlp(self.norm(self.mlp_norm, mlp_in))
            if self.cfg.post_norms:
                mlp_out = self.norm("ln2_post", mlp_out)
        mlp_out = self.hook_mlp_out(mlp_out)
        if self.cfg.parallel_attn_mlp:
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        return self.hook_resid_post(resid_mid + mlp_out)
