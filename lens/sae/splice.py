"""Splicing dictionaries into a model: the dictionary's output replaces the activation at its hook.

`model.add_sae(sae)` makes the hook point run the dictionary before any hook sees the value, and
registers the dictionary's own hook points under the hook's name, SAELens's names:

    blocks.8.hook_resid_post.hook_sae_input       [batch, pos, d_in]
    blocks.8.hook_resid_post.hook_sae_acts_pre    [batch, pos, d_sae]
    blocks.8.hook_resid_post.hook_sae_acts_post   [batch, pos, d_sae]   the features
    blocks.8.hook_resid_post.hook_sae_recons      [batch, pos, d_in]
    blocks.8.hook_resid_post.hook_sae_error       [batch, pos, d_in]    (with the error term only)
    blocks.8.hook_resid_post.hook_sae_output      [batch, pos, d_in]

so caching, hooks, patching, ablation and attribution reach features like any other activation.

With the error term (the default) the splice writes recons + error, error = x - recons of the
unedited x, so the model computes what it did before (to float rounding) while an edit of a feature
moves the output by exactly its decoder change. The error is recomputed from the current input, and
when gradients flow (or a hook edits the dictionary) it comes from a second, unhooked pass, so the
gradient into x is the model's own (identity) and the gradient into a feature is its decoder
direction: attribution patching on features is the first-order term of exact feature patching.
Without the error term the reconstruction replaces the activation.

A transcoder reads `hook_name` (e.g. hook_mlp_in) and writes `hook_name_out` (e.g. hook_mlp_out);
its error is the true output minus its own. Its feature hooks sit under `hook_name`, as in SAELens.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch

from lens.hooks import HookPoint, act_name, unknown_hook
from lens.sae.config import DictionaryError
from lens.sae.dictionary import HOOK_NAMES, SAE

UPSTREAM = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons")
RESID_WIDTH = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "normalized", "embed",
               "pos_embed")


def hook_shape(model, name: str) -> tuple[int, ...]:
    """The trailing shape (after [batch, pos]) of the activation at a hook point."""
    cfg = model.cfg
    last = name.rsplit("hook_", 1)[-1]
    if last in RESID_WIDTH:
        return (cfg.d_model,)
    if last in ("pre", "pre_linear", "post"):
        return (cfg.d_mlp,)
    if last in ("q", "z", "rot_q"):
        return (cfg.n_heads, cfg.d_head)
    if last in ("k", "v", "rot_k"):
        return (cfg.n_kv_heads, cfg.d_head)
    raise DictionaryError(f"a dictionary reads one vector per position (or per head); {name} is not such an "
                          f"activation. Valid kinds: {', '.join(RESID_WIDTH)}, mlp pre/post, attn q/k/v/z")


def _check_width(model, sae: SAE, hook: str, width: int, what: str) -> None:
    shape = hook_shape(model, hook)
    cfg = sae.cfg
    if len(shape) == 1:
        expected = shape[0]
    elif cfg.hook_head_index is not None:
        if not 0 <= cfg.hook_head_index < shape[0]:
            raise DictionaryError(f"{sae!r} reads head {cfg.hook_head_index} of {hook}, which has {shape[0]} heads")
        expected = shape[1]
    elif cfg.reshape_activations == "hook_z" or cfg.is_transcoder:
        expected = shape[0] * shape[1]
    else:
        raise DictionaryError(f"{hook} is per head {list(shape)}; {sae!r} neither flattens the heads "
                              f"(reshape_activations='hook_z') nor names a head (hook_head_index)")
    if width != expected:
        raise DictionaryError(f"{sae!r} has {what}={width}, but {hook} of this model "
                              f"({model.cfg.model_type}) has width {expected}; the dictionary was made for "
                              f"{sae.cfg.model_name or 'another model'}")


class Splice:
    """One dictionary spliced into a model (made by add_sae)."""

    def __init__(self, model, sae: SAE, use_error_term: bool):
        cfg = sae.cfg
        self.model, self.sae, self.use_error_term = model, sae, use_error_term
        self.hook, self.out_hook = cfg.hook_name, cfg.out_hook
        for name in {self.hook, self.out_hook}:
            if name not in model.hook_dict:
                near = str(unknown_hook(name, model.hook_dict)).split(".", 1)[-1]
                raise DictionaryError(f"{sae!r} reads or writes {name!r}, which this model has no hook point for."
                                      f"{near}")
        _check_width(model, sae, self.hook, cfg.d_in, "d_in")
        if cfg.is_transcoder:
            _check_width(model, sae, self.out_hook, cfg.d_out, "d_out")
        shorts = [n for n in HOOK_NAMES if use_error_term or n != "hook_sae_error"]
        self.points: dict[str, HookPoint] = {f"{self.hook}.{n}": getattr(sae, n) for n in shorts}
        self._x_in: torch.Tensor | None = None

    # --- the computation at the hooks ---------------------------------------------

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        head = self.sae.cfg.hook_head_index
        return x if head is None else x[..., head, :]

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """At a transcoder's input hook: keep the input for the output hook."""
        self._x_in = x
        return x

    def write(self, x: torch.Tensor) -> torch.Tensor:
        """At the output hook: the dictionary's output (+ error) in place of x."""
        sae = self.sae
        x_in = x if self._x_in is None else self._x_in
        self._x_in = None
        inp = self._head(x_in)
        if sae.cfg.reshape_activations != "hook_z" and inp.dim() > 3:  # a transcoder on a per-head hook
            inp = inp.flatten(-2)
        out = sae.decode(sae.encode(inp))
        skip = sae.skip(inp)
        out = out if skip is None else out + skip
        target = self._head(x)
        if self.use_error_term:
            if self._needs_clean_pass(inp):
                with hooks_off(sae):
                    clean = sae(inp)
            else:
                clean = out.detach()
            out = out + sae.hook_sae_error(target.to(sae.dtype).reshape(clean.shape) - clean)
        out = sae.hook_sae_output(out).to(x.dtype).reshape(target.shape)
        if sae.cfg.hook_head_index is None:
            return out
        x = x.clone()
        x[..., sae.cfg.hook_head_index, :] = out
        return x

    def _needs_clean_pass(self, inp: torch.Tensor) -> bool:
        hooked = any(p.fwd_fns or p.bwd_fns for n, p in self.points.items() if n.rsplit(".", 1)[-1] in UPSTREAM)
        return hooked or (torch.is_grad_enabled() and inp.requires_grad)

    # --- attaching -----------------------------------------------------------------

    def attach(self) -> None:
        clash = set(self.points) & set(self.model.hook_dict)
        if clash or self.model.hook_dict[self.out_hook].splice is not None:
            raise DictionaryError(f"a dictionary is already spliced at {self.hook}; remove it first "
                                  f"(model.remove_sae) or splice this one elsewhere")
        for name, point in self.points.items():
            point.name = name
            self.model.hook_dict[name] = point
        if self.out_hook != self.hook:
            self.model.hook_dict[self.hook].splice = self.read
        self.model.hook_dict[self.out_hook].splice = self.write

    def detach(self) -> None:
        model = self.model
        model._hooks.remove([h for h in list(model._hooks.handles) if h.point in self.points.values()])
        for name, point in self.points.items():
            point.fwd_fns.clear(), point.bwd_fns.clear()
            point.name = ""
            model.hook_dict.pop(name, None)
        model.hook_dict[self.hook].splice = None
        model.hook_dict[self.out_hook].splice = None


@contextmanager
def hooks_off(sae: SAE):
    """Run the dictionary with its hook points silent (the error term's clean pass)."""
    points = [getattr(sae, n) for n in HOOK_NAMES]
    saved = [(p.fwd_fns, p.bwd_fns) for p in points]
    try:
        for p in points:
            p.fwd_fns, p.bwd_fns = [], []
        yield
    finally:
        for p, (fwd, bwd) in zip(points, saved, strict=True):
            p.fwd_fns, p.bwd_fns = fwd, bwd


def _splices(model) -> dict[str, Splice]:
    if "_splices" not in model.__dict__:
        model.__dict__["_splices"] = {}
    return model.__dict__["_splices"]


def add_sae(model, sae: SAE, use_error_term: bool = True) -> SAE:
    """Splice `sae` in at its hook (sae.cfg.hook_name). Checks the hook exists and the widths match."""
    if not isinstance(sae, SAE):
        raise TypeError(f"add_sae takes a lens.SAE (SAE.load(folder), SAE.from_pretrained(release, id), "
                        f"SAE.from_sae_lens(sae)), not {type(sae).__name__}")
    sae.cfg.hook_name = act_name(sae.cfg.hook_name)
    splice = Splice(model, sae, use_error_term)
    if sae.device != model.device:
        sae.to(model.device)
    splice.attach()
    _splices(model)[splice.hook] = splice
    return sae


def remove_sae(model, sae_or_hook: SAE | str | None = None) -> None:
    """Remove one spliced dictionary (by object or hook name), or all of them (None)."""
    splices = _splices(model)
    if sae_or_hook is None:
        targets = list(splices)
    elif isinstance(sae_or_hook, SAE):
        targets = [h for h, s in splices.items() if s.sae is sae_or_hook]
    else:
        targets = [h for h in splices if h == act_name(sae_or_hook)]
    if sae_or_hook is not None and not targets:
        raise DictionaryError(f"no dictionary {sae_or_hook!r} is spliced; spliced at: {sorted(splices) or 'none'}")
    for hook in targets:
        splices.pop(hook).detach()


def attached(model) -> dict[str, SAE]:
    """The spliced dictionaries by the hook they read."""
    return {hook: s.sae for hook, s in _splices(model).items()}


@contextmanager
def spliced(model, saes: SAE | Sequence[SAE] | None, use_error_term: bool = True):
    """Dictionaries spliced for the duration of a with-block, removed on exit (also on error)."""
    saes = [] if saes is None else [saes] if isinstance(saes, SAE) else list(saes)
    added = []
    try:
        for sae in saes:
            added.append(add_sae(model, sae, use_error_term))
        yield model
    finally:
        for sae in added:
            remove_sae(model, sae)
