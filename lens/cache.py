"""ActivationCache: the activations of one forward pass, by hook name, and run_with_cache that fills it.

Keys are full hook names or their short forms: cache["resid_post", 5],
cache["pattern", 3], cache["blocks.5.hook_resid_post"], cache["embed"].
"""

from __future__ import annotations

from typing import Iterator

import torch

from lens.decompose import ResidualAnalyses
from lens.errors import HookWouldNotFireError, ShapeMismatchError
from lens.hooks import resolve_key, unknown_hook
from lens.memory import keep_freed_memory, retaining
from lens.slicing import Slice


class ActivationCache(ResidualAnalyses):
    """Activations by hook name; the residual analyses come from lens.decompose."""

    def __init__(self, cache_dict: dict[str, torch.Tensor], model, has_batch_dim: bool = True):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    def _name(self, key) -> str:
        name = resolve_key(key, self.model.cfg.n_layers)
        if name not in self.cache_dict:
            if name in self.model.hook_dict:
                raise KeyError(f"{name!r} is a hook of this model but was not cached; widen names_filter "
                               f"(it had {len(self.cache_dict)} names)")
            raise unknown_hook(name, self.model.hook_dict)
        return name

    def __getitem__(self, key) -> torch.Tensor:
        return self.cache_dict[self._name(key)]

    def __contains__(self, key) -> bool:
        try:
            return resolve_key(key, self.model.cfg.n_layers) in self.cache_dict
        except (KeyError, TypeError):
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def to(self, device) -> "ActivationCache":
        """Move the tensors to `device`, in place (as TransformerLens); returns the cache."""
        self.cache_dict = {k: v.to(device) for k, v in self.items()}
        return self

    def remove_batch_dim(self) -> "ActivationCache":
        """Drop the batch axis of a batch-of-one cache, in place (as TransformerLens); returns the cache."""
        if not self.has_batch_dim:
            return self
        sizes = {v.shape[0] for v in self.values()}
        if sizes != {1}:
            raise ShapeMismatchError(f"remove_batch_dim needs a batch of 1; this cache has batch sizes {sorted(sizes)}")
        self.cache_dict = {k: v[0] for k, v in self.items()}
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice) -> "ActivationCache":
        """A new cache of the batch rows batch_slice selects (a Slice input: an int drops the batch axis)."""
        if not self.has_batch_dim:
            raise ValueError("this cache has no batch axis (remove_batch_dim was applied)")
        chosen = Slice(batch_slice)
        return ActivationCache({k: chosen.apply(v, 0) for k, v in self.items()}, self.model,
                               has_batch_dim=not chosen.drops_axis)

    def toggle_autodiff(self, mode: bool = False) -> None:
        """torch.set_grad_enabled(mode), globally, as TransformerLens's method (prefer torch.no_grad())."""
        torch.set_grad_enabled(mode)

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.values())

    def __repr__(self) -> str:
        lines = [f"ActivationCache({len(self)} activations, {self.nbytes / 2**20:.1f} MiB"
                 f"{'' if self.has_batch_dim else ', batch dim removed'})"]
        shown = list(self.items())
        for name, value in shown[:12]:
            lines.append(f"  {name}: {list(value.shape)} {str(value.dtype).removeprefix('torch.')}")
        if len(shown) > 12:
            lines.append(f"  ... {len(shown) - 12} more (cache.keys() lists them)")
        return "\n".join(lines)


def cached_names(model, names_filter, start_at_layer=None, stop_at_layer=None) -> list[str]:
    """The hook names run_with_cache stores. None and predicates leave out the on-request hooks
    (hook_result, the per-head inputs, hook_mlp_in); naming one caches it."""
    if names_filter is None:
        names = model.firing_hooks(start_at_layer, stop_at_layer)
    elif callable(names_filter):
        names = model._hooks.select(names_filter)
    else:
        return model._hooks.select(names_filter)
    return [n for n in names if model.cached_by_default(n.rsplit(".", 1)[-1])]


def run_with_cache(model, input, *model_args, names_filter=None, device=None, remove_batch_dim=False,
                   incl_bwd=False, **model_kwargs):
    """See HookedTransformer.run_with_cache. incl_bwd also stores gradients ("<name>_grad") by
    back-propagating the output, which must then be a scalar (return_type="loss")."""
    names = cached_names(model, names_filter, model_kwargs.get("start_at_layer"), model_kwargs.get("stop_at_layer"))
    keep_freed_memory()
    store: dict[str, torch.Tensor] = {}

    def keep(key):
        def hook(activation, point):
            store[key] = activation.detach().to(device) if device is not None else activation.detach()
        return hook

    fwd = [(name, keep(name)) for name in names]
    bwd = [(name, keep(name + "_grad")) for name in names] if incl_bwd else []
    with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd), retaining(names):
        output = model(input, *model_args, **model_kwargs)
        if incl_bwd:
            if not (isinstance(output, torch.Tensor) and output.dim() == 0):
                raise ValueError("incl_bwd=True needs a scalar output to differentiate: pass return_type='loss'")
            output.backward()
    missing = [n for n in names if n not in store]
    if missing:
        raise HookWouldNotFireError(f"these hooks were asked for but never fired: {missing}")
    cache = ActivationCache(store, model)
    return output, cache.remove_batch_dim() if remove_batch_dim else cache
