"""HookedTransformerConfig: TransformerLens's config of a model built from scratch, mapped to a ModelConfig.

`HookedTransformer(HookedTransformerConfig(...))` builds the toy models TransformerLens's tutorials and
tests build (attention-only, LayerNorm / RMSNorm, learned or rotary positions, GQA, d_vocab_out), with
random weights from `seed`. A field lens cannot honour is an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from lens.config import ModelConfig, RotaryConfig

NORMS = {"LN": ("layernorm", False), "LNPre": ("layernorm", True), "RMS": ("rmsnorm", False),
         "RMSPre": ("rmsnorm", True)}
ACT_FNS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_pytorch_tanh", "silu": "silu",
           "relu": "relu", "gelu_fast": "gelu_new"}


@dataclass
class HookedTransformerConfig:
    """TransformerLens's fields (the ones toy models use); see TransformerLens's docs for each."""

    n_layers: int
    d_model: int
    n_ctx: int
    d_head: int
    model_name: str = "custom"
    n_heads: int = -1
    d_mlp: int | None = None
    act_fn: str | None = None
    d_vocab: int = -1
    eps: float = 1e-5
    use_attn_result: bool = False
    use_attn_scale: bool = True
    attn_scale: float = -1.0
    use_split_qkv_input: bool = False
    use_hook_mlp_in: bool = False
    use_attn_in: bool = False
    use_local_attn: bool = False
    original_architecture: str | None = None
    tokenizer_name: str | None = None
    window_size: int | None = None
    normalization_type: str | None = "LN"
    device: str | None = None
    n_devices: int = 1
    attention_dir: str = "causal"
    attn_only: bool = False
    seed: int | None = None
    initializer_range: float = -1.0
    init_weights: bool = True
    d_vocab_out: int = -1
    parallel_attn_mlp: bool = False
    rotary_dim: int | None = None
    n_params: int | None = None
    use_hook_tokens: bool = False
    gated_mlp: bool = False
    default_prepend_bos: bool = True
    dtype: torch.dtype = torch.float32
    tokenizer_prepends_bos: bool | None = None
    n_key_value_heads: int | None = None
    positional_embedding_type: str = "standard"
    final_rms: bool = False
    rotary_base: float = 10000
    rotary_adjacent_pairs: bool = False
    init_mode: str = "gpt2"
    num_experts: int | None = None
    experts_per_token: int | None = None
    tie_word_embeddings: bool = False
    default_padding_side: str = "right"

    def __post_init__(self):
        if self.n_heads == -1:
            self.n_heads = self.d_model // self.d_head
            if self.d_model % self.d_head:
                raise ValueError(f"d_model {self.d_model} is not a multiple of d_head {self.d_head}")
        if not self.attn_only:
            if self.d_mlp is None:
                self.d_mlp = self.d_model * 4
            if self.act_fn is None:
                raise ValueError("act_fn must be given for a model with MLPs (attn_only=False)")
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.initializer_range < 0:
            self.initializer_range = 0.8 / self.d_model ** 0.5  # TransformerLens's gpt2 init scale
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.default_padding_side not in ("left", "right"):
            raise ValueError(f"default_padding_side must be 'left' or 'right', not {self.default_padding_side!r}")
        if self.n_devices > 1 and torch.cuda.device_count() < self.n_devices:
            raise ValueError(f"n_devices={self.n_devices} but {torch.cuda.device_count()} CUDA devices are present")

    @classmethod
    def unwrap(cls, config: HookedTransformerConfig | dict) -> HookedTransformerConfig:
        return cls(**config) if isinstance(config, dict) else config

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> HookedTransformerConfig:
        return cls(**config_dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_model_config(self) -> ModelConfig:
        """The lens ModelConfig of this model; raises for what lens does not build."""
        unsupported = {
            "normalization_type": self.normalization_type not in NORMS,
            "positional_embedding_type": self.positional_embedding_type not in ("standard", "rotary"),
            "attention_dir": self.attention_dir != "causal",
            "use_local_attn": self.use_local_attn,
            "act_fn": not self.attn_only and self.act_fn not in ACT_FNS,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, on in unsupported.items() if on]
        if bad:
            raise NotImplementedError(f"lens does not build models with {', '.join(bad)}; supported: "
                                      f"normalization_type in {sorted(NORMS)}, positional_embedding_type "
                                      f"'standard' or 'rotary', causal attention, act_fn in {sorted(ACT_FNS)}")
        if self.d_vocab <= 0:
            raise ValueError("d_vocab must be given (TransformerLens reads it from tokenizer_name, which needs the "
                             "HF hub; pass d_vocab=...)")
        norm, _ = NORMS[self.normalization_type]
        scale = None if self.use_attn_scale and self.attn_scale <= 0 else \
            (self.attn_scale if self.use_attn_scale else 1.0)
        return ModelConfig(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_head=self.d_head,
            d_mlp=self.d_mlp or 0, attn_only=self.attn_only, d_vocab=self.d_vocab, d_vocab_out=self.d_vocab_out,
            n_ctx=self.n_ctx, n_kv_heads=self.n_key_value_heads, model_type=self.original_architecture or "custom",
            act_fn=ACT_FNS.get(self.act_fn, "relu"), gated_mlp=self.gated_mlp, norm=norm, norm_eps=self.eps,
            positions="learned" if self.positional_embedding_type == "standard" else "rotary",
            rotary=RotaryConfig(theta=float(self.rotary_base), dim=self.rotary_dim,
                                style="adjacent" if self.rotary_adjacent_pairs else "half"),
            parallel_attn_mlp=self.parallel_attn_mlp, attn_scale=scale,
            n_experts=self.num_experts or 0, experts_per_token=self.experts_per_token or 0,
            tied_embeddings=self.tie_word_embeddings, default_prepend_bos=self.default_prepend_bos)

    @property
    def fixed_norms(self) -> bool:
        """Whether the norms have no weights (LNPre, RMSPre): they stay 1 (and the bias 0)."""
        return NORMS[self.normalization_type][1]
