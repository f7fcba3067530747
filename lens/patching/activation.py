"""Activation patching: run the corrupted input with one activation taken from the clean run, for each
layer × position / head / ..., and read the metric. `patch` is the front door; the TransformerLens-named
functions (lens/patching/compat.py) and `generic_activation_patch` are thin layers over the same engine.

As in TransformerLens, the patched value comes from the CLEAN cache and is written into a forward on the
CORRUPTED tokens, so a score near the clean value marks an activation that carries the difference.

Grouped-query attention: `k` and `v` have n_kv_heads heads, and patching "the key of head h" patches the
key/value head that h shares with its group. The k/v sweeps are therefore over kv heads ([layer, n_kv_heads],
as TransformerLens does), labelled KV0, KV1, ...
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from lens.analysis.common import all_in_range, str_tokens
from lens.hooks import act_name
from lens.patching.engine import Edit, run_patches, scalar
from lens.patching.inputs import by_length, check_length, join_rows, pair_or_set, set_texts, sweep_scores
from lens.patching.metrics import metric_name
from lens.patching.result import PatchResult, patch_result
from lens.patching.slots import (
    HEAD_VECTOR,
    PATTERN,
    RESID,
    layout,
    pos_axis,
    slot,
    write_slot,
)

KV_HOOKS = ("k", "v", "rot_k")
# TransformerLens's axis names → lens's
AXIS_ALIASES = {"head_index": "head", "dest_pos": "pos"}


def slot_setter(axes_of_activation: Sequence[str], index_axes: Sequence[str]) -> Callable:
    """A TransformerLens patch setter `(corrupted_activation, index, clean_activation) -> patched`, with
    index = (layer, *values along index_axes)."""
    index_axes = [AXIS_ALIASES.get(a, a) for a in index_axes]

    def setter(corrupted_activation, index, clean_activation):
        where = slot(axes_of_activation, dict(zip(index_axes, index[1:], strict=True)))
        corrupted_activation[where] = clean_activation[where]
        return corrupted_activation
    setter.positionwise = True  # lets the engine skip positions it leaves unchanged
    return setter


# TransformerLens's setters by name, for generic_activation_patch callers.
layer_pos_patch_setter = slot_setter(RESID, ["pos"])
layer_pos_head_vector_patch_setter = slot_setter(HEAD_VECTOR, ["pos", "head"])
layer_head_vector_patch_setter = slot_setter(HEAD_VECTOR, ["head"])
layer_head_pattern_patch_setter = slot_setter(PATTERN, ["head"])
layer_head_pos_pattern_patch_setter = slot_setter(PATTERN, ["head", "pos"])
layer_head_dest_src_pos_pattern_patch_setter = slot_setter(PATTERN, ["head", "pos", "src_pos"])


def axis_sizes(model, hook: str, n_pos: int) -> dict[str, int]:
    heads = model.cfg.n_kv_heads if hook in KV_HOOKS else model.cfg.n_heads
    return {"layer": model.cfg.n_layers, "pos": n_pos, "src_pos": n_pos, "head": heads, "neuron": model.cfg.d_mlp}


def setter_patches(model, clean_cache, activation_name: str, rows: Sequence[Sequence[int]], patch_setter,
                   n_pos: int) -> list[list[Edit]]:
    """One patch per index row (layer, ...): `patch_setter(corrupted rows, index, clean activation)`."""
    patches = []
    for index in rows:
        hook = act_name(activation_name, int(index[0]))
        clean = clean_cache[hook]
        check_length(clean, pos_axis(hook), n_pos, hook)
        index = [int(i) for i in index]
        patches.append([Edit(hook, lambda rows, index=index, clean=clean: patch_setter(rows, index, clean),
                             positionwise=getattr(patch_setter, "positionwise", False))])
    return patches


def generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric, patch_setter,
                             activation_name: str, index_axis_names: Sequence[str] | None = None, index_df=None,
                             return_index_df: bool = False, *, attention_mask=None, vectorised_metric=None,
                             batch_size: int | None = None, memory_budget: int | None = None,
                             progress: bool = True):
    """TransformerLens's generic_activation_patch, batched: the metric of a forward on corrupted_tokens
    [batch, pos] with `patch_setter(corrupted_activation, index, clean_activation)` applied at hook
    `activation_name` of layer index[0], for every index.

    Indices: the product of the ranges of `index_axis_names` (the first is "layer"; others "pos", "head",
    "head_index", "dest_pos", "src_pos"), giving a tensor with one dimension per axis; or `index_df`, a
    pandas DataFrame (or a list of index tuples) whose rows are indices, giving a flat tensor.
    return_index_df also returns the indices (a DataFrame when pandas is installed, else a list).

    patching_metric: logits [batch, pos, d_vocab] → a scalar, called once per patch (see
    lens/patching/metrics.py for the vectorised and position-restricted forms that run faster).
    batch_size / memory_budget (bytes): how many patched copies share a forward (default: from a 1 GiB
    budget). progress=False silences the progress bar.
    """
    tokens = torch.as_tensor(corrupted_tokens)
    tokens = tokens[None] if tokens.dim() == 1 else tokens
    n_pos = tokens.shape[-1]
    if index_df is None:
        if index_axis_names is None:
            raise ValueError("give index_axis_names (e.g. ('layer', 'pos')) or index_df")
        names = [AXIS_ALIASES.get(a, a) for a in index_axis_names]
        sizes = axis_sizes(model, activation_name, n_pos)
        unknown = [a for a in names if a not in sizes]
        if unknown or names[0] != "layer":
            raise ValueError(f"index_axis_names {list(index_axis_names)}: the first must be 'layer', the others "
                             f"among {sorted(sizes) + ['head_index', 'dest_pos']}")
        shape = [sizes[a] for a in names]
        rows = list(itertools.product(*(range(s) for s in shape)))
    else:
        rows = index_df.to_numpy().tolist() if hasattr(index_df, "to_numpy") else [tuple(r) for r in index_df]
        shape = [len(rows)]
    patches = setter_patches(model, clean_cache, activation_name, rows, patch_setter, n_pos)
    sweep = run_patches(model, tokens, patching_metric, patches, attention_mask=attention_mask,
                        vectorised=vectorised_metric, batch_size=batch_size, memory_budget=memory_budget,
                        progress=progress, desc=f"patching {activation_name}")
    values = sweep.values.float().to(model.device).view(shape)  # float32, as TransformerLens returns
    if not return_index_df:
        return values
    if index_df is None:
        try:
            import pandas as pd
            index_df = pd.DataFrame(rows, columns=list(index_axis_names))
        except ImportError:
            index_df = rows
    return values, index_df


# --- the front door -----------------------------------------------------------------------------------

What = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos",
               "q", "k", "v", "pattern", "q_by_pos", "k_by_pos", "v_by_pos", "pattern_by_pos"]


@dataclass(frozen=True)
class Target:
    hook: str  # short hook name
    axes: tuple[str, ...]  # the result's axes after "layer"


TARGETS: dict[str, Target] = {
    **{name: Target(name, ("pos",)) for name in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")},
    "heads": Target("z", ("head",)),
    "heads_by_pos": Target("z", ("pos", "head")),
    **{name: Target(name, ("head",)) for name in ("q", "k", "v", "pattern")},
    **{f"{name}_by_pos": Target(name, ("pos", "head")) for name in ("q", "k", "v", "pattern")},
}


def target(model, what: str) -> Target:
    if what not in TARGETS:
        raise ValueError(f"what={what!r} is not something patch() sweeps; valid: {', '.join(TARGETS)}")
    if what == "resid_mid" and model.cfg.parallel_attn_mlp:
        raise ValueError("this model's blocks are parallel (attention and MLP both read resid_pre), so it has "
                         "no resid_mid; patch resid_pre, attn_out or mlp_out")
    return TARGETS[what]


def sweep_grid(model, what: str, n_pos: int, layers: Sequence[int] | None, positions, ps=None):
    """(target, axes, coords, index rows, fixed slot values, per-row position masks) of a patching sweep.
    Over a prompt set (ps), positions are names or indices resolved per row: the "pos" coordinates number
    them, and masks[i] [n_rows, pos] marks position i in each row (None for a single prompt)."""
    spec = target(model, what)
    n_layers = model.cfg.n_layers
    layers = all_in_range(layers, n_layers, "layer", f"a model of {n_layers} layers")
    masks = None
    if ps is None:
        pos = all_in_range(positions, n_pos, "position", f"a prompt of {n_pos} tokens")
    else:
        masks = [ps.position_mask(p) for p in set_positions(ps, positions)]
        pos = list(range(len(masks)))
    sizes = axis_sizes(model, spec.hook, n_pos)
    coords = [layers] + [pos if a == "pos" else list(range(sizes[a])) for a in spec.axes]
    axes = ["layer"] + ["kv_head" if a == "head" and spec.hook in KV_HOOKS and model.cfg.n_kv_heads != model.cfg.n_heads
                        else a for a in spec.axes]
    fixed = {"pos": pos} if positions is not None and "pos" not in spec.axes else {}
    if fixed and masks is not None:
        fixed = {"pos": torch.stack(masks).any(0)}
    return spec, axes, coords, list(itertools.product(*coords)), fixed, masks


def set_positions(ps, positions) -> list:
    """A prompt set's positions to sweep: None = every index when all rows have one length, else every named
    position; a name or index, or a list of them."""
    if positions is None:
        return list(range(ps.n_pos)) if ps.same_length else list(ps.position_names)
    positions = [positions] if isinstance(positions, (str, int)) else list(positions)
    if not positions:
        raise ValueError(f"no positions given: give names ({ps.position_names}) or indices, or None for all")
    return positions


def position_labels(ps, positions, str_tokens: list[str]) -> list[str]:
    """What the "pos" coordinates of a set's sweep show: names, or row 0's tokens at the indices."""
    return [p if isinstance(p, str) else str_tokens[p] for p in set_positions(ps, positions)]


def slot_of(spec: Target, index, fixed: dict, masks) -> tuple:
    """The slot one sweep index patches (per-row positions over a set)."""
    place = {**fixed, **dict(zip(spec.axes, index[1:], strict=True))}
    if masks is not None and "pos" in spec.axes:
        place["pos"] = masks[place["pos"]]
    return slot(layout(spec.hook), place)


def corrupted_labels(model, side) -> list[str] | None:
    """One prompt: the corrupted prompt's tokens, so a hotspot where the prompts differ names both."""
    return None if isinstance(side.clean_value, torch.Tensor) else str_tokens(model, side.corrupted_tokens[:1])


class CleanSide(NamedTuple):
    """What activation and attribution patching share: the token pair, the sweep, the clean run."""

    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    mask: torch.Tensor | None
    spec: Target
    axes: list[str]
    coords: list[list[int]]
    rows: list[tuple[int, ...]]
    fixed: dict
    clean_cache: object
    clean_value: float | torch.Tensor  # [n_rows] over a prompt set
    metric: object
    masks: list[torch.Tensor] | None  # per-row position masks over a prompt set
    labels: list[str]  # what the "pos" coordinates name (one prompt: the clean prompt's tokens)
    texts: tuple[str, str]  # the clean and corrupted prompts as the result shows them


def clean_side(model, clean, corrupted, metric, what: str, positions, layers) -> CleanSide:
    """Tokenise the pair (or take a prompt set's batches and row metric), lay out the sweep, and cache the
    swept hook on the clean prompt."""
    clean_tokens, corrupted_tokens, mask, metric, ps, texts = pair_or_set(model, clean, corrupted, metric)
    clean_tokens, corrupted_tokens = clean_tokens.to(model.device), corrupted_tokens.to(model.device)
    spec, axes, coords, rows, fixed, masks = sweep_grid(model, what, corrupted_tokens.shape[1], layers, positions, ps)
    tokens = str_tokens(model, clean_tokens[:1])
    labels = tokens if ps is None else position_labels(ps, positions, tokens)
    hooks = [act_name(spec.hook, l) for l in coords[0]]
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=hooks, attention_mask=mask)
    clean_value = metric.rows(clean_logits).double().cpu() if ps is not None else scalar(metric(clean_logits))
    return CleanSide(clean_tokens, corrupted_tokens, mask, spec, axes, coords, rows, fixed, clean_cache,
                     clean_value, metric, masks, labels, texts)


def patch(model, clean, corrupted=None, metric=None, what: What = "resid_pre", positions: Sequence | None = None,
          layers: Sequence[int] | None = None, *, top_k: int = 10, per_row: bool = False,
          vectorised_metric: bool | None = None, batch_size: int | None = None, memory_budget: int | None = None,
          progress: bool = True) -> PatchResult:
    """Activation patching of `what` at every layer (or `layers`) × position / head, clean → corrupted.

    clean, corrupted: strings, lists of strings, or token ids, of the same token count; or a
    lens.data.PromptSet as `clean` (no `corrupted`): every row patched at once (rows are one more batch
    axis), the result the mean over rows with its spread (see PatchResult).
    metric: logits [batch, pos, d_vocab] → a scalar, e.g. `metrics.logit_diff(model, " John", " Mary")`;
    over a set a kind ("logit_diff" default, "logit", "prob", "logprob") or lens.data.row_metric(...).
    what: resid_pre / resid_mid / resid_post / attn_out / mlp_out ([layer, pos]); heads (z, all positions,
    [layer, head]); heads_by_pos ([layer, pos, head]); q / k / v / pattern ([layer, head]; k, v over kv
    heads) and their _by_pos forms ([layer, pos, head]; pattern by destination position).
    positions: the positions to sweep (for the per-position targets) or to patch together (for the
    all-position ones); None = all. Over a set: position names ("S2", "END", ...) resolved per row, or
    indices when all rows have one length. Returns scores, normalised scores (0 = corrupted, 1 = clean), the
    top hotspots, summary() and plot(path); per_row keeps every row's values (sets).
    """
    runs = []  # (rows, side, sweep): a set whose rows differ in length runs one sweep per length
    for rows, part in by_length(clean, metric, positions):
        # each part sweeps the whole set's positions (a part of one length would default to its indices)
        swept = set_positions(clean, positions) if rows is not None and "pos" in target(model, what).axes \
            else positions
        side = clean_side(model, part, corrupted, metric, what, swept, layers)
        patches = []
        for index in side.rows:
            hook = act_name(side.spec.hook, index[0])
            patches.append([Edit(hook, write_slot(side.clean_cache[hook], slot_of(side.spec, index, side.fixed,
                                                                                  side.masks)))])
        sweep = run_patches(model, side.corrupted_tokens, side.metric, patches, attention_mask=side.mask,
                            vectorised=vectorised_metric, batch_size=batch_size, memory_budget=memory_budget,
                            progress=progress, desc=f"patching {what}")
        runs.append((rows, side, sweep))
    shape = [len(c) for c in side.coords]
    scores = join_rows([(rows, sweep_scores(sweep.values, shape)) for rows, _, sweep in runs])
    clean_value = join_rows([(rows, s.clean_value) for rows, s, _ in runs])
    corrupted_value = sweep.base_value if sweep.base_rows is None else \
        join_rows([(rows, sweep.base_rows) for rows, _, sweep in runs])
    texts = side.texts if len(runs) == 1 else set_texts(clean)
    return patch_result("activation patching", what, metric_name(side.metric), *texts, scores,
                        clean_value, corrupted_value, side.axes, side.coords, side.labels, top_k,
                        corrupted_str_tokens=corrupted_labels(model, side),
                        per_row=per_row)
