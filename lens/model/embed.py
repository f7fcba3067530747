"""The embedding, positional embedding and unembedding as TransformerLens's modules: `model.embed.W_E`,
`model.pos_embed.W_pos`, `model.unembed.W_U` / `.b_U`, each callable as in TransformerLens. Their
parameters live in the model's Weights (these read them there, so edits go both ways)."""

from __future__ import annotations

import torch
from torch import nn

from lens.model.ops import linear


class _Reads(nn.Module):
    def __init__(self, weights):
        super().__init__()
        object.__setattr__(self, "weights", weights)  # shared with the model, not a submodule


class Embed(_Reads):
    W_E = property(lambda self: self.weights.W_E, doc="[d_vocab, d_model]")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [batch, pos] → [batch, pos, d_model] (without Gemma's embedding scale, as TransformerLens)."""
        return self.W_E[tokens]


class PosEmbed(_Reads):
    W_pos = property(lambda self: self.weights.W_pos, doc="[n_ctx, d_model]")

    def forward(self, tokens: torch.Tensor, past_kv_pos_offset: int = 0, attention_mask=None) -> torch.Tensor:
        """tokens [batch, pos] → the positional embeddings [batch, pos, d_model] (padded rows count from
        their first real token when attention_mask is given)."""
        batch, n = tokens.shape
        if attention_mask is None:
            positions = torch.arange(past_kv_pos_offset, past_kv_pos_offset + n, device=self.W_pos.device)
            return self.W_pos[positions].expand(batch, n, -1)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -n:]
        return self.W_pos[positions.to(self.W_pos.device)]


class Unembed(_Reads):
    W_U = property(lambda self: self.weights.unembedding(), doc="[d_model, d_vocab_out]")
    b_U = property(lambda self: self.weights.b_U, doc="[d_vocab_out]")

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        """[..., d_model] → [..., d_vocab_out]: resid @ W_U + b_U (no final norm, as TransformerLens)."""
        return linear(resid, self.W_U, self.b_U)
