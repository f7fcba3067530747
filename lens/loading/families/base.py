"""What a family is: an HF-config mapper and a weight converter. Shared helpers for both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lens.config import ModelConfig, RotaryConfig
from lens.errors import UnsupportedModelError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    config: Callable[[object], ModelConfig]  # HF PretrainedConfig → ModelConfig
    convert: Callable[[StateDict, ModelConfig], StateDict]  # HF state dict → lens parameters
    verified: str  # how the family was checked, for supported_families()


class Checkpoint:
    """An HF state dict read by key templates, with the base-model prefix optional."""

    def __init__(self, state_dict: StateDict, prefix: str, n_layers: int):
        self.sd, self.prefix, self.n_layers = state_dict, prefix, n_layers

    def get(self, key: str, default=None) -> torch.Tensor | None:
        for candidate in (key, self.prefix + key, key.removeprefix(self.prefix)):
            if candidate in self.sd:
                return self.sd[candidate]
        if default is not None:
            return default
        raise KeyError(f"the checkpoint has no tensor {key!r} (nor with prefix {self.prefix!r})")

    def has(self, key: str) -> bool:
        return any(k in self.sd for k in (key, self.prefix + key, key.removeprefix(self.prefix)))

    def unembedding(self, cfg: ModelConfig, key: str, bias_key: str | None = None) -> StateDict:
        """W_U (from `key`, an [d_vocab, d_model] weight, unless tied to W_E) and b_U (zero without bias_key)."""
        out = {"b_U": self.get(bias_key) if bias_key else torch.zeros(cfg.d_vocab)}
        if not cfg.tied_embeddings:
            out["W_U"] = self.get(key).T
        return out

    def stack(self, template: str, transform=lambda t: t, zeros: tuple[int, ...] | None = None) -> torch.Tensor:
        """torch.stack over layers of transform(sd[template.format(i=layer)]); zeros if absent and allowed."""
        if zeros is not None and not self.has(template.format(i=0)):
            return torch.zeros(self.n_layers, *zeros)
        return torch.stack([transform(self.get(template.format(i=i))) for i in range(self.n_layers)])


def hf_get(hf_cfg, *names, default=None):
    """The first of `names` that the HF config has and is not None."""
    for name in names:
        value = getattr(hf_cfg, name, None)
        if value is not None:
            return value
    return default


def rotary_config(params: dict, d_head: int, **extra) -> RotaryConfig:
    """RotaryConfig from an HF `rope_parameters` dict (transformers ≥ 5); partial_rotary_factor
    rotates only the first fraction of each head's dimensions."""
    kind = params.get("rope_type", "default")
    factor = params.get("partial_rotary_factor", 1.0)
    common = dict(theta=float(params["rope_theta"]), dim=None if factor == 1.0 else int(d_head * factor), **extra)
    if kind == "default":
        return RotaryConfig(**common)
    if kind == "linear":
        return RotaryConfig(scaling="linear", factor=float(params["factor"]), **common)
    if kind == "llama3":
        return RotaryConfig(scaling="llama3", factor=float(params["factor"]),
                            low_freq_factor=float(params["low_freq_factor"]),
                            high_freq_factor=float(params["high_freq_factor"]),
                            original_max_positions=int(params["original_max_position_embeddings"]), **common)
    raise UnsupportedModelError(f"RoPE type {kind!r} is not supported yet (supported: default, linear, llama3)")


def sliding_windows(hf_cfg, n_layers: int) -> tuple[int | None, ...] | None:
    """Per-layer window from HF `layer_types` / `sliding_window`; None when every layer is global."""
    window = getattr(hf_cfg, "sliding_window", None)
    layer_types = getattr(hf_cfg, "layer_types", None)
    if window is None:
        return None
    if layer_types is None:
        windows = (window,) * n_layers
    else:
        windows = tuple(window if kind == "sliding_attention" else None for kind in layer_types)
    return None if all(w is None for w in windows) else windows


def token_ids(hf_cfg) -> dict:
    def first(value):
        return value[0] if isinstance(value, (list, tuple)) else value
    return dict(bos_token_id=first(getattr(hf_cfg, "bos_token_id", None)),
                eos_token_id=first(getattr(hf_cfg, "eos_token_id", None)),
                pad_token_id=first(getattr(hf_cfg, "pad_token_id", None)))
