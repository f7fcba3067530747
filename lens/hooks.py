"""Hook points, hook names and the hook registry of a model.

A HookPoint is an identity on the forward pass that user functions can observe
or replace: `fn(activation, hook) -> activation | None`. With nothing attached
it costs one attribute check. Names follow TransformerLens (`blocks.3.attn.hook_z`)
and the short forms of its `get_act_name` (`("z", 3)`, `"resid_post"`).
"""

from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Union

import torch
from torch import nn

from lens.errors import UnknownHookError

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
NameOrFilter = Union[str, tuple, Callable[[str], bool]]
Direction = Literal["fwd", "bwd"]

# Hook points that cost extra compute when used, so a cache of "everything"
# leaves them out unless they are named (TransformerLens gates them behind flags).
ON_REQUEST = ("hook_result", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in")


class HookState:
    """`point.has_hooks`: truthy when any hook is attached (lens's use), and callable as TransformerLens's
    `has_hooks(dir="both", including_permanent=True, level=None)`."""

    __slots__ = ("point",)

    def __init__(self, point: HookPoint):
        self.point = point

    def __bool__(self) -> bool:  # anything (a hook or a spliced dictionary) reads the point: compute it
        return bool(self.point.fwd_fns or self.point.bwd_fns or self.point.splice)

    def __call__(self, dir: Direction | Literal["both"] = "both", including_permanent: bool = True,
                 level: int | None = None) -> bool:
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', not {dir!r}")
        return any(dir in ("both", h.direction) and (including_permanent or not h.permanent)
                   and (level is None or h.level == level) for h in self.point.handles)


class HookPoint(nn.Module):
    def __init__(self):
        super().__init__()
        self.name: str = ""
        self.fwd_fns: list[HookFn] = []
        self.bwd_fns: list[HookFn] = []
        self.handles: list[HookHandle] = []  # one per attached fn, in fwd_fns / bwd_fns
        self.ctx = None  # the ForwardContext of the forward running this hook (positions, KV-cache offset)
        # A spliced dictionary (lens/sae/splice.py): a plain function, so its module stays out of the
        # model's parameters. It runs before the hooks, which see what it returns.
        self.splice: Callable[[torch.Tensor], torch.Tensor] | None = None
        # A value given from outside (`given_outputs`): a block's hook_attn_out or hook_mlp_out that holds
        # one takes it, and the attention or MLP that would compute it is skipped.
        self.given: torch.Tensor | None = None

    def layer(self) -> int | None:
        match = re.match(r"blocks\.(\d+)\.", self.name)
        return int(match.group(1)) if match else None

    has_hooks = property(HookState, doc="truthy when a hook is attached; has_hooks(dir, ...) as TransformerLens")
    fwd_hooks = property(lambda self: [h for h in self.handles if h.direction == "fwd"])
    bwd_hooks = property(lambda self: [h for h in self.handles if h.direction == "bwd"])


    # Overriding __call__ skips nn.Module's dispatch: an unhooked point is two attribute checks.
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.splice is not None:
            x = self.splice(x)
        if not (self.fwd_fns or self.bwd_fns):
            return x
        for fn in self.fwd_fns:
            out = fn(x, self)
            if out is not None:
                x = out
        if self.bwd_fns and x.requires_grad:
            # The hooks attached now fire on this graph's backward, even if run_with_hooks
            # has detached them by the time .backward() is called.
            fns = tuple(self.bwd_fns)
            x.register_hook(lambda grad: self._run_bwd(grad, fns))
        return x

    def _run_bwd(self, grad: torch.Tensor, fns) -> torch.Tensor:
        for fn in fns:
            out = fn(grad, self)
            if isinstance(out, tuple):  # TransformerLens's backward hooks may return (grad,)
                out = out[0]
            if out is not None:
                grad = out
        return grad

    def add_hook(self, hook: HookFn, dir: Direction = "fwd", is_permanent: bool = False, level: int | None = None,
                 prepend: bool = False) -> HookHandle:
        """Attach `hook(activation, hook_point)`; prepend runs it before the others. As TransformerLens's."""
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"hook direction must be 'fwd' or 'bwd', not {dir!r}")
        fns = self.fwd_fns if dir == "fwd" else self.bwd_fns
        fns.insert(0, hook) if prepend else fns.append(hook)
        handle = HookHandle(self, hook, dir, is_permanent, level)
        self.handles.append(handle)
        return handle

    def remove_hooks(self, dir: Direction | Literal["both"] = "fwd", including_permanent: bool = False,
                     level: int | None = None) -> None:
        """Remove the hooks in direction `dir` ('fwd', 'bwd' or 'both'), the permanent ones too if asked
        (and only those added at `level`, when given)."""
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', not {dir!r}")
        for handle in list(self.handles):
            if (dir in ("both", handle.direction) and (including_permanent or not handle.permanent)
                    and (level is None or handle.level == level)):
                handle.remove()

    def extra_repr(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class HookHandle:
    point: HookPoint
    fn: HookFn
    direction: Direction
    permanent: bool
    level: int | None = None

    is_permanent = property(lambda self: self.permanent)  # TransformerLens's names
    context_level = property(lambda self: self.level)

    def remove(self) -> None:
        fns = self.point.fwd_fns if self.direction == "fwd" else self.point.bwd_fns
        if self in self.point.handles:
            self.point.handles.remove(self)
            fns.remove(self.fn)


GIVEN_POINTS = ("hook_attn_out", "hook_mlp_out")  # the points whose component a given value skips


@contextmanager
def given_outputs(model, values: dict[str, torch.Tensor]):
    """Within the with-block, each named point (`blocks.L.hook_attn_out` or `blocks.L.hook_mlp_out`) takes
    its given value [batch, pos, d_model] (after any post-norm), and the attention or MLP that would compute
    it is not run: a forward that reads some components' outputs from another run spends nothing on them.
    Hooks on the points inside a skipped component would never fire, so they are an error."""
    points = model.hook_dict
    inside = {}  # the name prefix of each point a skipped component holds → the given point that skips it
    for name in values:
        if name not in points or not name.endswith(GIVEN_POINTS):
            raise ValueError(f"{name!r} cannot be given: only a block's {' or '.join(GIVEN_POINTS)} can")
        block = name.rsplit(".", 1)[0]
        parts = ("attn.", "hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in") \
            if name.endswith("attn_out") else ("mlp.", "hook_mlp_in")
        inside |= {f"{block}.{part}": name for part in parts}
    prefixes = tuple(inside)
    for n, p in points.items():  # one pass over the attached points, not one per given value
        if (p.fwd_fns or p.bwd_fns or p.splice) and n.startswith(prefixes):
            given = next(inside[prefix] for prefix in prefixes if n.startswith(prefix))
            raise ValueError(f"hooks on {n} would never fire: {given} is given, so its component is skipped")
    try:
        for name, value in values.items():
            points[name].given = value
        yield
    finally:
        for name in values:
            points[name].given = None


# --- names -----------------------------------------------------------------------

_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
            "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_ATTN_NAMES = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "pre_linear", "mid", "post", "router_logits", "expert_indices", "expert_weights"}
_LAYER_TYPES = {"a": "attn", "attention": "attn", "m": "mlp", "b": "", "block": "", "blocks": ""}


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name for a short one, as TransformerLens's get_act_name.

    act_name("resid_post", 5) == "blocks.5.hook_resid_post";
    act_name("pattern", 3) == "blocks.3.attn.hook_pattern";
    act_name("scale", 2, "ln1") == "blocks.2.ln1.hook_scale";
    act_name("scale") == "ln_final.hook_scale"; act_name("embed") == "hook_embed".
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    compact = re.fullmatch(r"([a-z]+)(\d+)([a-z]*\d*)", name) if layer is None else None
    if compact:  # TransformerLens's compact keys: "k6a" = ("k", 6, "a"), "scale1ln1" = ("scale", 1, "ln1")
        name, layer, layer_type = compact.group(1), int(compact.group(2)), compact.group(3) or None
    name = _ALIASES.get(name, name)
    if layer_type is not None:
        layer_type = _LAYER_TYPES.get(layer_type, layer_type)
    elif name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    if layer is None:
        if name in ("scale", "normalized"):
            return f"{layer_type or 'ln_final'}.hook_{name}"
        if layer_type:
            raise UnknownHookError(f"hook {name!r} of {layer_type!r} needs a layer index")
        return f"hook_{name}"
    prefix = f"blocks.{layer}." + (f"{layer_type}." if layer_type else "")
    return f"{prefix}hook_{name}"


def resolve_key(key, n_layers: int) -> str:
    """A cache/hook key (full name, short name, or (name, layer[, layer_type])) → full name."""
    if isinstance(key, tuple):
        name, *rest = key
        layer = rest[0] if rest else None
        if isinstance(layer, int) and layer < 0:
            layer += n_layers
        return act_name(name, layer, rest[1] if len(rest) > 1 else None)
    if isinstance(key, str):
        return act_name(key)
    raise TypeError(f"a hook key is a name or a (name, layer) tuple, not {type(key).__name__}")


def unknown_hook(name: str, valid: Iterable[str]) -> UnknownHookError:
    valid = list(valid)
    near = difflib.get_close_matches(name, valid, n=6, cutoff=0.5)
    hint = f" Nearest valid names: {', '.join(near)}." if near else ""
    templates = sorted({re.sub(r"blocks\.\d+\.", "blocks.{i}.", v) for v in valid})
    return UnknownHookError(
        f"this model has no hook {name!r}.{hint} Hook points of this model: {', '.join(templates)}"
    )


class HookRegistry:
    """The hook points of a model by name, and the hooks attached to them."""

    def __init__(self, points: dict[str, HookPoint], n_layers: int):
        self.points = points
        self.n_layers = n_layers
        self.handles: list[HookHandle] = []
        for name, point in points.items():
            point.name = name

    def resolve(self, key) -> str:
        name = resolve_key(key, self.n_layers)
        if name not in self.points:
            raise unknown_hook(name, self.points)
        return name

    def select(self, name_or_filter: NameOrFilter) -> list[str]:
        """The names a hook target covers; a target that covers nothing is an error."""
        if callable(name_or_filter):
            names = [n for n in self.points if name_or_filter(n)]
            if not names:
                raise unknown_hook("<filter matching nothing>", self.points)
            return names
        if isinstance(name_or_filter, (list, set)):
            return [self.resolve(k) for k in name_or_filter]
        return [self.resolve(name_or_filter)]

    def add(self, name_or_filter: NameOrFilter, fn: HookFn, direction: Direction = "fwd",
            permanent: bool = False, prepend: bool = False) -> list[HookHandle]:
        if direction not in ("fwd", "bwd"):
            raise ValueError(f"hook direction must be 'fwd' or 'bwd', not {direction!r}")
        added = [self.points[name].add_hook(fn, direction, permanent, prepend=prepend)
                 for name in self.select(name_or_filter)]
        self.handles.extend(added)
        return added

    def remove(self, handles: Iterable[HookHandle]) -> None:
        for handle in handles:
            handle.remove()
            if handle in self.handles:
                self.handles.remove(handle)

    def reset(self, including_permanent: bool = False, direction: Direction | None = None) -> None:
        self.remove([h for h in list(self.handles) if (including_permanent or not h.permanent)
                     and direction in (None, h.direction)])
        for point in self.points.values():  # hooks added on a point itself (HookPoint.add_hook)
            if point.handles:
                point.remove_hooks(direction or "both", including_permanent)

    def hooked(self) -> list[str]:
        """The points with hooks attached (spliced dictionaries are part of the model, not hooks)."""
        return [name for name, point in self.points.items() if point.fwd_fns or point.bwd_fns]

    @contextmanager
    def attached(self, fwd_hooks=(), bwd_hooks=()):
        handles = []
        try:
            for target, fn in fwd_hooks:
                handles += self.add(target, fn, "fwd")
            for target, fn in bwd_hooks:
                handles += self.add(target, fn, "bwd")
            yield
        finally:
            self.remove(handles)
