"""All parameters of a model, stored once, stacked over layers, in the layout the forward consumes.

Projections are stored as matmul weights `x @ W` ([d_in, d_out]); the per-head
TransformerLens shapes (`W_Q [n_layers, n_heads, d_model, d_head]`, ...) are
views of them, so reading or editing `model.W_Q` or `model.blocks[3].attn.W_O`
touches the very tensors the forward uses. Biases that an architecture lacks are
stored as zeros (TransformerLens does the same), so every analysis can add them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lens.config import ModelConfig

# The parameters outside the blocks; every other one has a leading layer axis.
GLOBAL_PARAMETERS = ("W_E", "W_pos", "W_U", "b_U", "ln_final_w", "ln_final_b")
# Key/value weights: n_kv_heads stored, n_heads shown (see Weights.head_view).
KV_NAMES = ("W_K", "W_V", "b_K", "b_V")


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical parameter name → shape. Converters produce exactly these names."""
    L, D, H, K, E, M, V = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads,
                           cfg.d_head, cfg.d_mlp, cfg.d_vocab)
    shapes = {
        "W_E": (V, D),
        "W_Q": (L, D, H * E), "b_Q": (L, H * E),
        "W_K": (L, D, K * E), "b_K": (L, K * E),
        "W_V": (L, D, K * E), "b_V": (L, K * E),
        "W_O": (L, H * E, D), "b_O": (L, D),
        "W_in": (L, D, M), "b_in": (L, M),
        "W_out": (L, M, D), "b_out": (L, D),
        "ln_final_w": (D,),
        "b_U": (cfg.d_vocab_out,),
    }
    if cfg.positions == "learned":
        shapes["W_pos"] = (cfg.n_ctx, D)
    if not cfg.tied_embeddings:
        shapes["W_U"] = (D, cfg.d_vocab_out)
    if cfg.gated_mlp:
        shapes["W_gate"] = (L, D, M)
    if cfg.n_experts:  # every MLP weight gains an expert axis after the layer axis
        X = cfg.n_experts
        shapes |= {"W_router": (L, D, X), "W_in": (L, X, D, M), "W_gate": (L, X, D, M), "b_in": (L, X, M),
                   "W_out": (L, X, M, D)}
    pre = (["ln1"] + ([] if cfg.shared_norm else ["ln2"])) if cfg.pre_norms else []
    shapes |= {f"{norm}_w": (L, D) for norm in pre}
    if cfg.norm == "layernorm":
        shapes |= {f"{norm}_b": (L, D) for norm in pre} | {"ln_final_b": (D,)}
    if cfg.post_norms:
        shapes |= {"ln1_post_w": (L, D), "ln2_post_w": (L, D)}
    if cfg.qk_norm:
        shapes |= {"q_norm_w": (L, E), "k_norm_w": (L, E)} if cfg.qk_norm_per_head else \
            {"q_norm_w": (L, H * E), "k_norm_w": (L, K * E)}
    return shapes


class Weights(nn.Module):
    """The parameters, as `nn.Parameter`s named by `parameter_shapes`.

    After `split_layers()` (a model dispatched over devices) each block owns a Weights of its
    own layer's parameters, layer axis of length 1; reading a stacked name such as `W_Q` here
    then gathers a copy onto this module's device."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype = torch.float32, device=None,
                 names: Iterable[str] | None = None):
        super().__init__()
        self.cfg = cfg
        self.parts: list[Weights] = []  # per-layer Weights after split_layers()
        shapes = parameter_shapes(cfg)
        for name in shapes if names is None else names:
            self.register_parameter(name, nn.Parameter(torch.empty(shapes[name], dtype=dtype, device=device)))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            parts = self.__dict__.get("parts")
            if not parts or name not in parts[0]._parameters:
                raise
        layers = [part.stored(name) for part in parts]
        return torch.cat([t.detach().to(self.W_E.device) for t in layers])

    def stored(self, name: str) -> torch.Tensor:
        """A parameter, read from its offload store (CPU or disk) while it is not in memory."""
        param = getattr(self, name)
        if param.device.type == "meta":
            store, prefix = self.__dict__["offload_store"]  # set by placement.dispatch
            return store[prefix + name]
        return param

    @torch.no_grad()
    def split_layers(self) -> list[Weights]:
        """Move each layer's parameters into a Weights of its own (layer axis of length 1)."""
        names = [n for n in parameter_shapes(self.cfg) if n not in GLOBAL_PARAMETERS]
        self.parts = []
        for i in range(self.cfg.n_layers):
            part = Weights(self.cfg, names=())
            for name in names:
                part.register_parameter(name, nn.Parameter(self._parameters[name][i:i + 1].clone()))
            self.parts.append(part)
        for name in names:
            del self._parameters[name]
        return self.parts

    @torch.no_grad()
    def init_random(self, seed: int, std: float = 0.02) -> None:
        """Normal(0, std) matrices, zero biases, unit norm weights (zero for Gemma's 1+w)."""
        generator = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if name.startswith("b_") or name.endswith("_b"):
                param.zero_()
            elif name.endswith("_w"):
                param.fill_(1.0 - self.cfg.norm_weight_offset)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take the converted tensors; every parameter must be given, with its exact shape.
        A contiguous tensor of the parameter's dtype and device is adopted without a copy."""
        expected = dict(self.named_parameters())
        missing, extra = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
        if missing or extra:
            raise ValueError(f"converted weights do not match the config: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        with torch.no_grad():
            for name, param in expected.items():
                if tuple(tensors[name].shape) != tuple(param.shape):
                    raise ValueError(f"{name}: converted shape {tuple(tensors[name].shape)}, "
                                     f"expected {tuple(param.shape)}")
                tensor = tensors[name]
                if tensor.dtype == param.dtype and tensor.device == param.device and tensor.is_contiguous():
                    param.data = tensor
                else:
                    param.copy_(tensor)

    # Per-head views, with a leading layer axis. A block indexes them with [layer].
    def head_view(self, name: str) -> torch.Tensor:
        """W_Q/W_O/b_Q [L, n_heads, ...]; W_K/W_V/b_K/b_V [L, n_heads, ...] as TransformerLens gives them
        under grouped-query attention (each kv head repeated for the query heads that read it: a copy
        then, a view otherwise); _W_K/_W_V/_b_K/_b_V [L, n_kv_heads, ...], the kv heads themselves (views)."""
        cfg = self.cfg
        if name in KV_NAMES:
            raw = self.head_view("_" + name)
            group = cfg.n_heads // cfg.n_kv_heads
            return raw if group == 1 else raw.repeat_interleave(group, dim=1)
        w = self.stored(name.removeprefix("_"))
        heads = cfg.n_heads if name in ("W_Q", "b_Q", "W_O") else cfg.n_kv_heads
        layers = w.shape[0]
        if name == "W_O":  # [L, H*E, D] -> [L, H, E, D]
            return w.view(layers, heads, cfg.d_head, cfg.d_model)
        if name.removeprefix("_").startswith("b_"):  # [L, H*E] -> [L, H, E]
            return w.view(layers, heads, cfg.d_head)
        # [L, D, H*E] -> [L, H, D, E]
        return w.view(layers, cfg.d_model, heads, cfg.d_head).permute(0, 2, 1, 3)

    def unembedding(self) -> torch.Tensor:  # [d_model, d_vocab]; a view of W_E when tied
        return self.W_E.T if self.cfg.tied_embeddings else self.W_U


class LayerComponent(nn.Module):
    """A part of one layer (block, attention, MLP) that reads its parameters from a Weights
    it shares with the model, at index `slot` of their layer axis."""

    def adopt(self, weights: Weights, slot: int) -> None:
        object.__setattr__(self, "weights", weights)  # shared, not a submodule
        self.slot = slot
