"""Memory: keeping freed memory in the process, and estimating a forward's from its shapes.

Keeping freed memory, so repeated caching does not pay for fresh pages:

run_with_cache of every hook retains ~50 MB per layer for 8 x 128 tokens of a small model. When
the cache is dropped, glibc returns those pages to the OS, and the next call faults them in again;
on CPU that page-fault cost, not compute, made caching ~2x slower than a forward (bench/).
Raising glibc's trim threshold keeps the freed pages for reuse: the process's resident memory
stays at its high-water mark instead of shrinking after `del cache`.
Set LENS_KEEP_FREED_MEMORY=0 to leave the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from lens import guard

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper bound on 64-bit: larger blocks are always mmapped


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed heap memory for reuse (once per process). True if it was applied."""
    if os.environ.get("LENS_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, ...): nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


# --- estimates from shapes, checked against the caller's guard before a forward allocates -------------

# The axes after [batch, pos] of each kind of activation, by the last part of its hook name
# (pos itself: every activation has one position axis, the query position for attention).
_AXES = {
    **{name: ("head", "d_head") for name in ("q", "z", "rot_q")},
    **{name: ("kv_head", "d_head") for name in ("k", "v", "rot_k")},
    **{name: ("head", "d_model") for name in ("result", "q_input", "k_input", "v_input")},
    "pattern": ("head", "key_pos"), "attn_scores": ("head", "key_pos"),
    **{name: ("d_mlp",) for name in ("pre", "pre_linear", "post")},
    "scale": (), "router_logits": ("expert",), "expert_indices": ("k",), "expert_weights": ("k",),
}
_retained: ContextVar[tuple[str, ...]] = ContextVar("lens_retained", default=())


def activation_numel(cfg, name: str, n_keys: int) -> int:
    """Elements one position of one prompt holds at hook `name` (n_keys: the attended positions)."""
    sizes = {"head": cfg.n_heads, "kv_head": cfg.n_kv_heads, "d_head": cfg.d_head, "d_model": cfg.d_model,
             "key_pos": n_keys, "d_mlp": cfg.d_mlp, "expert": cfg.n_experts, "k": cfg.experts_per_token}
    return math.prod(sizes[axis] for axis in _AXES.get(name.rsplit("hook_", 1)[-1], ("d_model",)))


@contextmanager
def retaining(names: Iterable[str]) -> Iterator[None]:
    """Forwards inside keep the activations at these hooks (run_with_cache): count them in the estimate."""
    token = _retained.set(tuple(names))
    try:
        yield
    finally:
        _retained.reset(token)


def forward_bytes(model, batch: int, n: int, n_keys: int, explicit_attention: bool, kv_len: int = 0,
                  retained: Iterable[str] = (), logits: bool = True) -> dict[str, int]:
    """A generous estimate of what one forward of [batch, n] new positions (attending to n_keys) holds at its
    peak, by part: a block's working activations, one layer's attention scores, the logits (when it makes
    them), the KV cache of kv_len positions, and the activations kept at `retained` hooks. Under autograd
    every block's activations stay for the backward."""
    cfg, size = model.cfg, model.dtype.itemsize
    per_token = 4 * cfg.d_model + 2 * (cfg.n_heads + cfg.n_kv_heads) * cfg.d_head + 3 * cfg.d_mlp
    layers_alive = cfg.n_layers if torch.is_grad_enabled() else 1
    scores = batch * cfg.n_heads * n * n_keys * 4 * (2 if explicit_attention else 1)  # fp32 softmax
    return {
        "activations": batch * n * per_token * size * layers_alive,
        "attention scores": scores * layers_alive,
        "logits": batch * n * cfg.d_vocab * max(size, 4) if logits else 0,
        "KV cache": 2 * cfg.n_layers * batch * cfg.n_kv_heads * kv_len * cfg.d_head * size,
        "kept activations": sum(batch * n * activation_numel(cfg, name, n_keys) * size for name in retained),
    }


def check_forward(model, batch: int, n: int, offset: int, kv_cache, logits: bool = True) -> None:
    """Refuse a forward whose estimate is over the caller's guard (no guard: nothing to check)."""
    if guard.current() is None:
        return
    hooked = [handle.point.name for handle in model._hooks.handles]
    explicit = model.cfg.attn_logit_softcap is not None or any(
        name.endswith(("hook_pattern", "hook_attn_scores")) for name in hooked)
    parts = forward_bytes(model, batch, n, offset + n, explicit, 0 if kv_cache is None else kv_cache.max_len,
                          _retained.get(), logits)
    total = sum(parts.values())
    largest = ", ".join(f"{name} {guard.mib(b)}" for name, b in sorted(parts.items(), key=lambda p: -p[1])[:2] if b)
    guard.require(total, f"a forward of {batch} x {n} tokens ({largest})",
                  "use a shorter prompt or sequence, a smaller batch, fewer layers / hooks / heads to keep, or "
                  "fewer new tokens")
