"""ModelConfig: the architecture facts that drive the one generic transformer.

Only facts about the architecture live here; run-time choices (device, dtype,
which hooks to cache) are arguments of the functions that need them. A family
is a mapper from its HF config to this class (lens/loading/families/).

Axis names used in shape comments throughout lens:
    batch, pos (query position), k_pos (key position), d_model, n_heads,
    n_kv_heads, d_head, d_mlp, d_vocab, n_layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Literal

from lens.compat.names import TransformerLensNames

NormKind = Literal["layernorm", "rmsnorm"]
PositionKind = Literal["learned", "rotary"]
RotaryStyle = Literal["half", "adjacent"]  # HF rotate_half (NeoX/Llama) vs GPT-J pairs
ActFn = Literal["gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "relu"]


@dataclass(frozen=True)
class RotaryConfig:
    """Rotary position embedding of one attention kind."""

    theta: float = 10000.0
    dim: int | None = None  # rotated dims per head; None = all of d_head
    style: RotaryStyle = "half"
    scaling: Literal["none", "linear", "llama3"] = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 scaling
    high_freq_factor: float = 4.0  # llama3 scaling
    original_max_positions: int = 8192  # llama3 scaling


@dataclass(frozen=True)
class ModelConfig(TransformerLensNames):
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    n_kv_heads: int | None = None  # None = n_heads (no grouped-query attention)
    d_vocab_out: int | None = None  # logits; None = d_vocab (differs only in toy models of algorithmic tasks)
    attn_only: bool = False  # blocks without an MLP (TransformerLens's attention-only toy models)
    model_type: str = "custom"  # the HF model_type it came from, for summaries only
    act_fn: ActFn = "gelu_new"
    gated_mlp: bool = False
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    # Gemma's RMSNorm multiplies by (1 + w); the offset is added in fp32 as HF does.
    norm_weight_offset: float = 0.0
    positions: PositionKind = "learned"
    # One rotary config per layer kind; layers pick theirs through `layer_rotary`.
    rotary: RotaryConfig = field(default_factory=RotaryConfig)
    local_rotary: RotaryConfig | None = None  # rotary of sliding-window layers when it differs
    parallel_attn_mlp: bool = False  # GPT-NeoX: resid + attn(ln1(x)) + mlp(ln2(x))
    shared_norm: bool = False  # GPT-J, Phi: a parallel block's MLP reads ln1 too; there is no ln2
    pre_norms: bool = True  # False for OLMo-2: attention and MLP read the raw residual
    post_norms: bool = False  # Gemma 2/3, OLMo-2: norm the attn and MLP outputs before adding them
    qk_norm: bool = False  # RMSNorm on queries and keys before rotary
    qk_norm_per_head: bool = True  # over d_head (Gemma 3, Qwen3), or over all heads at once (OLMo-2)
    n_experts: int = 0  # mixture of experts (Mixtral) when > 0: each MLP is n_experts gated experts
    experts_per_token: int = 0  # top-k experts each token is routed to
    moe_renormalize: bool = True  # rescale the chosen experts' router probabilities to sum to 1
    attn_scale: float | None = None  # None = sqrt(d_head); scores are divided by it
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    # Per-layer sliding window in tokens (None = global attention); None = all global.
    sliding_windows: tuple[int | None, ...] | None = None
    embed_scale: float = 1.0  # Gemma multiplies embeddings by sqrt(d_model)
    tied_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Whether to_tokens prepends BOS by default: what the model's own tokenizer does.
    default_prepend_bos: bool = False

    def __post_init__(self):
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.d_vocab_out is None:
            object.__setattr__(self, "d_vocab_out", self.d_vocab)
        if self.tied_embeddings and self.d_vocab_out != self.d_vocab:
            raise ValueError(f"tied embeddings need d_vocab_out == d_vocab, not {self.d_vocab_out} != {self.d_vocab}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.n_experts and not (self.gated_mlp and 0 < self.experts_per_token <= self.n_experts):
            raise ValueError("a mixture of experts needs gated experts and 0 < experts_per_token <= n_experts")
        if not (self.pre_norms or self.post_norms):
            raise ValueError("a block needs pre-norms, post-norms or both")
        if self.shared_norm and not self.parallel_attn_mlp:
            raise ValueError("shared_norm is for parallel blocks (parallel_attn_mlp=True)")
        if self.sliding_windows is not None and len(self.sliding_windows) != self.n_layers:
            raise ValueError(f"sliding_windows has {len(self.sliding_windows)} entries for {self.n_layers} layers")

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else math.sqrt(self.d_head)

    def window(self, layer: int) -> int | None:
        return None if self.sliding_windows is None else self.sliding_windows[layer]

    def layer_rotary(self, layer: int) -> RotaryConfig:
        if self.local_rotary is not None and self.window(layer) is not None:
            return self.local_rotary
        return self.rotary

    @property
    def n_params(self) -> int:
        """Parameters of the transformer blocks and embeddings (what the summary reports)."""
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = self.d_model * self.d_mlp * (3 if self.gated_mlp else 2) * max(1, self.n_experts)
        embed = self.d_model * (self.d_vocab + (0 if self.tied_embeddings else self.d_vocab_out))
        pos = self.n_ctx * self.d_model if self.positions == "learned" else 0
        return self.n_layers * (attn + mlp) + embed + pos

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        data = json.loads(text)
        for key in ("rotary", "local_rotary"):
            if data.get(key) is not None:
                data[key] = RotaryConfig(**data[key])
        if data.get("sliding_windows") is not None:
            data["sliding_windows"] = tuple(data["sliding_windows"])
        return cls(**data)

# TransformerLens names it so (`from transformer_lens.config import HookedTransformerConfig`); it maps to ModelConfig.
from lens.compat.config import HookedTransformerConfig as HookedTransformerConfig  # noqa: E402
