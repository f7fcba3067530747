"""TransformerLens's config field names, read from a lens ModelConfig (a mixin of it)."""

from __future__ import annotations


class TransformerLensNames:
    """Read-only TransformerLens names for the fields of ModelConfig (`cfg.normalization_type`, ...)."""

    @property
    def normalization_type(self) -> str:
        return "RMS" if self.norm == "rmsnorm" else "LN"

    @property
    def positional_embedding_type(self) -> str:
        return "rotary" if self.positions == "rotary" else "standard"

    @property
    def n_key_value_heads(self) -> int | None:
        return None if self.n_kv_heads == self.n_heads else self.n_kv_heads

    @property
    def eps(self) -> float:
        return self.norm_eps

    @property
    def original_architecture(self) -> str:
        return self.model_type

    @property
    def rotary_dim(self) -> int | None:
        return (self.rotary.dim or self.d_head) if self.positions == "rotary" else None

    @property
    def rotary_base(self) -> float:
        return self.rotary.theta

    @property
    def rotary_adjacent_pairs(self) -> bool:
        return self.rotary.style == "adjacent"

    @property
    def tokenizer_prepends_bos(self) -> bool:
        return self.default_prepend_bos

    @property
    def use_attn_scale(self) -> bool:
        return self.scale != 1.0

    @property
    def num_experts(self) -> int | None:
        return self.n_experts or None

    @property
    def device(self):
        """The device of the model this config belongs to (set by the model; cpu before)."""
        return self.__dict__.get("_device", "cpu")

    @property
    def n_devices(self) -> int:
        return self.__dict__.get("_n_devices", 1)
