"""Hook selection, cache size estimates (lens.memory) and slice summaries for the cache tools.

lens's run_with_cache takes exact hook names; agents also write a short name for every layer
("resid_post", "pattern") or the template model_info lists ("blocks.{i}.hook_resid_post").
"""

from __future__ import annotations

import numpy as np
import torch
from mcp.server.mcpserver.exceptions import ToolError

from lens import HookedTransformer
from lens.errors import UnknownHookError
from lens.hooks import act_name, unknown_hook
from lens.memory import activation_numel

# The axes after batch of each kind of activation, by the last part of its hook name.
AXES = {
    **{name: ("pos", "head", "d_head") for name in ("q", "k", "v", "z", "rot_q", "rot_k")},
    **{name: ("pos", "head", "d_model") for name in ("result", "q_input", "k_input", "v_input")},
    "pattern": ("head", "query_pos", "key_pos"), "attn_scores": ("head", "query_pos", "key_pos"),
    **{name: ("pos", "neuron") for name in ("pre", "pre_linear", "post")},
    "scale": ("pos", "one"), "router_logits": ("pos", "expert"), "expert_indices": ("pos", "k"),
    "expert_weights": ("pos", "k"),
}
DEFAULT_AXES = ("pos", "d_model")


def axes_of(name: str) -> tuple[str, ...]:
    return AXES.get(name.rsplit("hook_", 1)[-1], DEFAULT_AXES)


def select_hooks(model: HookedTransformer, hooks: list[str]) -> list[str]:
    """Full hook names for names, short names (every layer) and 'blocks.{i}.' templates."""
    n_layers, names = model.cfg.n_layers, []
    for hook in hooks:
        if hook in model.hook_dict:
            names.append(hook)
            continue
        if "{i}" in hook:
            every = [hook.replace("{i}", str(i)) for i in range(n_layers)]
        else:
            every = [_full_name(hook, i) for i in range(n_layers)] + [_full_name(hook, None)]
        found = [name for name in every if name in model.hook_dict]
        if not found:
            raise unknown_hook(hook, model.hook_dict)
        names += found
    return list(dict.fromkeys(names))


def _full_name(short: str, layer: int | None) -> str | None:
    try:
        return act_name(short, layer)
    except UnknownHookError:  # e.g. "z" without a layer
        return None


def estimate_bytes(model: HookedTransformer, names: list[str], n_pos: int) -> int:
    """Bytes a cache of these hooks holds for one prompt of n_pos tokens."""
    return sum(activation_numel(model.cfg, name, n_pos) for name in names) * n_pos * model.dtype.itemsize


def index_slice(name: str, shape: tuple[int, ...], pos: int | None, head: int | None) -> tuple[tuple, list[str]]:
    """(an index into the activation without its batch axis, the axes left) for optional pos / head."""
    axes = list(axes_of(name))
    if len(axes) != len(shape):  # a hook this table does not know: leave it whole
        axes = [f"axis{i}" for i in range(len(shape))]
    index: list = [slice(None)] * len(axes)
    for axis_names, value, what in ((("pos", "query_pos"), pos, "pos"), (("head",), head, "head")):
        if value is None:
            continue
        found = [i for i, axis in enumerate(axes) if axis in axis_names]
        if not found:
            raise ToolError(f"{name} has no {what} axis: its axes are {axes} (shape {list(shape)}); leave {what} out")
        i = found[0]
        if not -shape[i] <= value < shape[i]:
            raise ToolError(f"{what} {value} is out of range for {name}: 0..{shape[i] - 1} ({axes[i]} axis)")
        index[i] = value % shape[i]
    left = [axis for axis, ix in zip(axes, index, strict=True) if isinstance(ix, slice)]
    return tuple(index), left


def top_entries(values: torch.Tensor, k: int) -> list[tuple[list[int], float]]:
    """The k entries of largest |value|, with their indices."""
    flat = values.flatten().float()
    order = flat.abs().argsort(descending=True)[:k]
    # numpy's unravel_index: torch's costs half a second on its first call (it imports torch._refs)
    return [([int(i) for i in np.unravel_index(int(j), values.shape)] if values.dim() else [], float(flat[j]))
            for j in order]
