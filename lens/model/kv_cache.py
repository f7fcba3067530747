"""A preallocated key/value cache, so each generation step runs only the new positions.

Keys and values of every layer live in two buffers of the final length, filled
left to right; a step writes its positions in place and attends over the filled
prefix. A forward over a layer range (start_at_layer/stop_at_layer) fills only the layers it runs;
each layer counts its own filled positions, so a layer that missed some cannot be read. The cache also keeps which positions are real tokens (left padding of a
batch stays masked for the whole generation).
"""

from __future__ import annotations

import torch

from lens.config import ModelConfig


class KVCache:
    """Per layer, keys and values [batch, n_kv_heads, max_len, d_head] (allocated on the layer's
    device at its first step); `length` positions are filled."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device=None):
        if max_len > cfg.n_ctx:
            from lens.errors import SequenceTooLongError
            raise SequenceTooLongError(f"generation would reach {max_len} tokens; this model's context window "
                                       f"(n_ctx) is {cfg.n_ctx}. Lower max_new_tokens or shorten the prompt.")
        self.shape = (batch, cfg.n_kv_heads, max_len, cfg.d_head)
        self.dtype = dtype
        self.keys: list[torch.Tensor | None] = [None] * cfg.n_layers
        self.values: list[torch.Tensor | None] = [None] * cfg.n_layers
        self.valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.filled = [0] * cfg.n_layers  # positions written per layer; a layer that missed some is unusable
        self.padded = False  # whether any filled position is padding
        self.frozen = False  # TransformerLens's freeze(): later forwards read the cache but do not extend it

    @classmethod
    def init_cache(cls, cfg: ModelConfig, device=None, batch_size: int = 1, dtype: torch.dtype | None = None
                   ) -> KVCache:
        """TransformerLens's constructor: room for the whole context window (n_ctx)."""
        return cls(cfg, batch_size, cfg.n_ctx, dtype or torch.float32, device)

    def freeze(self) -> None:
        """Later forwards attend to what the cache holds but leave it as it is (TransformerLens)."""
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False

    @property
    def max_len(self) -> int:
        return self.shape[2]

    def start_step(self, n: int, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Record the validity of the next n positions; returns the key mask [batch, length + n] or None."""
        if self.length + n > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {self.length} are filled and this step "
                             f"adds {n}")
        if mask is not None and not bool(mask.all()):
            self.valid[:, self.length:self.length + n] = mask.bool()
            self.padded = True
        return self.valid[:, :self.length + n] if self.padded else None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v [batch, n_kv_heads, n, d_head]; return all filled keys and values."""
        if self.keys[layer] is None:
            self.keys[layer] = torch.empty(self.shape, dtype=self.dtype, device=k.device)
            self.values[layer] = torch.empty(self.shape, dtype=self.dtype, device=k.device)
        if self.filled[layer] != self.length:
            raise ValueError(f"layer {layer} of the KV cache holds keys and values for {self.filled[layer]} of its "
                             f"{self.length} positions: an earlier forward with start_at_layer/stop_at_layer "
                             f"skipped this layer. Start later forwards past layer {layer}, or rebuild the cache")
        keys, values = self.keys[layer], self.values[layer]
        end = self.length + k.shape[2]
        if self.frozen:  # the step attends to the cached prefix and itself, and the cache is not extended
            return torch.cat([keys[:, :, :self.length], k], dim=2), torch.cat([values[:, :, :self.length], v], dim=2)
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        self.filled[layer] = end
        return keys[:, :, :end], values[:, :, :end]

    def end_step(self, n: int) -> None:
        if not self.frozen:
            self.length += n
