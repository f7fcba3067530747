"""run_with_cache (a forward whose activations stay on the server) and get_activation (reading them)."""

from __future__ import annotations

import re
from typing import Annotated

import torch
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens.cache import cached_names
from lens.hooks import resolve_key, unknown_hook
from mcp_server import activations, checks
from mcp_server.schemas import (
    Detail,
    ModelRef,
    Num,
    Part,
    Prompt,
    TokenProb,
    TokenWindow,
    ToolResult,
    TopK,
    token_window,
)
from mcp_server.state import mib, state_of
from mcp_server.tools.annotations import READ_ONLY, STORING

RAW_LIMIT = 64  # values returned as numbers without `detail`
RAW_LIMIT_DETAIL = 2048


class CachedGroup(Part):
    hook: str = Field(description="hook name, with {i} for the layer when it repeats per layer")
    count: int
    shape: list[int] = Field(description="shape of each, [batch, ...]")


class CacheSummary(ToolResult):
    cache: str = Field(description="the handle get_activation reads")
    tokens: TokenWindow
    top_next: list[TokenProb] = Field(description="the model's top next tokens after the last position")
    resid_norms: list[Num] = Field(description="L2 norm of the residual stream at the last position after each layer")
    cached: list[CachedGroup] | None = Field(description="hook, count and shape of what was kept (with detail)")
    n_activations: int
    size_mib: Num


def _groups(cache) -> list[CachedGroup]:
    groups: dict[str, CachedGroup] = {}
    for name, value in cache.items():
        template = re.sub(r"blocks\.\d+\.", "blocks.{i}.", name)
        if template in groups:
            groups[template].count += 1
        else:
            groups[template] = CachedGroup(hook=template, count=1, shape=list(value.shape))
    return list(groups.values())


def run_with_cache(
    ctx: Context,
    prompt: Prompt,
    hooks: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None, Field(
        max_length=500, description="'blocks.3.attn.hook_z', 'resid_post' (every layer), "
                                    "'blocks.{i}.hook_mlp_out'")] = None,
    top_k: TopK = 5,
    detail: Detail = False,
    model: ModelRef = None,
) -> CacheSummary:
    """Run a prompt, keeping its activations under a handle for get_activation; the top next tokens
    and residual norm per layer. A first look at a prompt."""
    state = state_of(ctx)
    with state.using(model) as entry, torch.no_grad():
        m = entry.model
        tokens = m.to_tokens(prompt, truncate=False)
        n_pos = checks.context(m, tokens.shape[1])
        names = cached_names(m, None if hooks is None else activations.select_hooks(m, hooks))
        state.reserve_cache(activations.estimate_bytes(m, names, n_pos))
        norms = [0.0] * m.cfg.n_layers

        def norm_at_last(resid, point):
            norms[point.layer()] = resid[0, -1].float().norm().item()
        norm_hooks = [(f"blocks.{i}.hook_resid_post", norm_at_last) for i in range(m.cfg.n_layers)]
        with m.hooks(fwd_hooks=norm_hooks):
            logits, cache = m.run_with_cache(tokens, names_filter=names)
        str_tokens = m.to_str_tokens(tokens[0])
        stored = state.store_cache(entry.handle, cache, str_tokens)
        last = logits[0, -1].float()
        probs = last.softmax(-1)
        top = probs.topk(min(top_k, probs.shape[0]))
        top_next = [TokenProb(token=m.to_string([int(i)]), id=int(i), prob=float(p), logit=float(last[i]))
                    for p, i in zip(top.values, top.indices, strict=True)]
    first = top_next[0]
    return CacheSummary(
        model=entry.handle, cache=stored.handle, tokens=token_window(str_tokens, detail), top_next=top_next,
        resid_norms=norms, cached=_groups(cache) if detail else None, n_activations=len(cache),
        size_mib=stored.nbytes / 2**20,
        interpretation=(f"cached {len(cache)} activations ({mib(stored.nbytes)}) of {n_pos} tokens as "
                        f"{stored.handle!r}; top next token {first.token!r} (p {first.prob:.3f}); residual norm "
                        f"at the last position {norms[0]:.1f} after L0, {norms[-1]:.1f} after L{len(norms) - 1}"))


class Entry(Part):
    index: list[int] = Field(description="indices along `axes` of the slice")
    value: Num


class HeadNorm(Part):
    head: int
    norm: Num


class ActivationSlice(ToolResult):
    cache: str
    hook: str
    shape: list[int] = Field(description="the whole activation, [batch, ...]")
    axes: list[str] = Field(description="the axes of the slice")
    slice_shape: list[int]
    norm: Num
    mean: Num
    std: Num
    min: Num
    max: Num
    top: list[Entry] = Field(description="entries of largest |value| (for MLP hooks: the top neurons)")
    head_norms: list[HeadNorm] | None = Field(None, description="heads by the norm of their slice, largest first")
    values: list | float | None = Field(None, description="the raw values, only for small slices")


def get_activation(
    ctx: Context,
    cache: Annotated[str, Field(min_length=1, max_length=100, description="handle from run_with_cache")],
    hook: Annotated[str, Field(min_length=1, max_length=200, description=(
        "'blocks.5.attn.hook_z', or a short name ('z') with layer"))],
    layer: Annotated[int | None, Field(ge=-1000, le=1000)] = None,
    pos: Annotated[int | None, Field(ge=-100_000, le=100_000, description="one position (query, for patterns)")] = None,
    head: Annotated[int | None, Field(ge=0, le=10_000)] = None,
    top_k: TopK = 10,
    detail: Detail = False,
) -> ActivationSlice:
    """Summarise a cached activation (narrowed by pos, head): shape, norm, stats, largest entries,
    heads by norm; values if ≤ 64 (2048 with detail)."""
    state = state_of(ctx)
    stored = state.cache(cache)
    with state.using(stored.model_handle) as entry:
        n_layers = entry.model.cfg.n_layers
        name = resolve_key(hook if layer is None else (hook, checks.layer(entry.model, layer)), n_layers)
        if name not in stored.cache.cache_dict:
            if name not in entry.model.hook_dict:
                raise unknown_hook(name, entry.model.hook_dict)
            groups = ", ".join(g.hook for g in _groups(stored.cache))
            raise ToolError(f"{name!r} was not cached in {cache!r}; it holds {groups}. Run run_with_cache with "
                            f"hooks=[{name!r}] (or no hooks, for every one).")
        full = stored.cache.cache_dict[name]
        index, axes = activations.index_slice(name, tuple(full.shape[1:]), pos, head)
        values = full[0][index].float()
        head_axis = axes.index("head") if "head" in axes else None
        head_norms = None
        if head_axis is not None:
            norms = values.movedim(head_axis, 0).flatten(1).norm(dim=1)
            order = norms.argsort(descending=True)[:top_k]
            head_norms = [HeadNorm(head=int(h), norm=float(norms[h])) for h in order]
        limit = RAW_LIMIT_DETAIL if detail else RAW_LIMIT
        top = [Entry(index=i, value=v) for i, v in activations.top_entries(values, top_k)]
        result = ActivationSlice(
            model=entry.handle, cache=cache, hook=name, shape=list(full.shape), axes=axes, slice_shape=list(values.shape),
            norm=float(values.norm()), mean=float(values.mean()), std=float(values.std()) if values.numel() > 1 else 0.0,
            min=float(values.min()), max=float(values.max()), top=top, head_norms=head_norms,
            values=values.tolist() if values.numel() <= limit else None, interpretation="")
    where = "".join(f", {k} {v}" for k, v in (("pos", pos), ("head", head)) if v is not None)
    biggest = f"; largest entry {top[0].value:+.3g} at {axes}={top[0].index}" if top else ""
    loudest = f"; head {head_norms[0].head} has the largest norm ({head_norms[0].norm:.3g})" if head_norms else ""
    result.interpretation = f"{name}{where}: shape {list(values.shape)}, norm {result.norm:.4g}{biggest}{loudest}"
    return result


TOOLS = [(run_with_cache, STORING), (get_activation, READ_ONLY)]
