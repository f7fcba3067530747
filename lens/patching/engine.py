"""The batched intervention engine every patching, path-patching and ablation sweep runs on.

A sweep is a list of patches; a patch is a list of edits; an edit replaces part of the activation at
one hook point. Instead of one forward per patch, the engine runs a batch of patched copies of the
input per forward (copy i carries patch i), sized to a memory budget, and skips what a patch cannot
change, which it reads off the base run (the input with only the shared edits):
- layers: a patch whose earliest edit is at layer L starts at L from the base run's residual stream
  (`start_at_layer`);
- positions: an edit that writes position-wise and leaves positions < s as they were (e.g. a clean
  activation equal to the corrupted one there, as for every token before the first one clean and
  corrupted prompts differ in) cannot change them anywhere, so the patch runs positions s.. only,
  attending to the base run's keys and values of the rest (`past_kv_cache`);
- whole patches that change nothing score the base run's metric without a forward.
A patch skips both at once: it runs layers L.. over positions s.. (unpadded inputs; a padded one
skips layers only). Edits and captures always see whole-sequence activations [batch, pos, ...]: the
engine fills the skipped positions in from the base run. With a metric that says which positions it
reads (see metrics.py), only those are unembedded.

The result equals one `run_with_hooks` per patch up to float rounding of the batched matmuls
(tests/test_patching.py checks ≤ 1e-5 on random models, ≤ 1e-4 on SmolLM2).

Prompt sets: the input's batch is a set's rows, so a sweep over N rows runs N rows × the copies per
forward, not N sweeps. A metric with per-row values (`metric.per_row = True`, as lens.data's row metrics)
maps logits [n_copies, batch, pos, d_vocab] to [n_copies, batch], and the sweep keeps every row's value:
`values` [n_patches, batch], `base_rows` [batch].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lens import guard
from lens.memory import forward_bytes
from lens.model.kv_cache import KVCache
from lens.patching.slots import pos_axis

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations per batched forward
CPU_MAX_TOKENS = 4096  # tokens per forward on CPU: past this, larger batches run no faster per copy


@dataclass(frozen=True)
class Edit:
    """Replace part of the activation at hook point `hook` (a full name): `fn(rows) -> rows`, rows being
    one copy's whole-sequence activation [batch, pos, ...] (the input's batch, not the batch of copies).
    positionwise: the new value at a position depends only on the old value at that position (true of
    slot writes), so positions the edit leaves alone on the base run need not be recomputed."""

    hook: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    positionwise: bool = True


Patch = Sequence[Edit]


@dataclass
class Sweep:
    values: torch.Tensor  # [n_patches] the metric with each patch applied
    base_value: float  # the metric of the base run (the input with only the shared edits)
    base_logits: torch.Tensor  # [batch, pos, d_vocab] of the base run
    captured: dict[str, torch.Tensor] = field(default_factory=dict)  # hook → [n_patches, batch, pos, ...]
    base_rows: torch.Tensor | None = None  # [batch] the base run's per-row values (per-row metrics)


def scalar(value, what: str = "the metric") -> float:
    """A metric's output as a float; anything but one number is an error that says so."""
    value = torch.as_tensor(value).detach()
    if value.numel() != 1:
        raise ValueError(f"{what} returned a tensor of shape {tuple(value.shape)}; a patching metric must return "
                         f"one number for a batch of logits [batch, pos, d_vocab] (reduce over the batch, e.g. "
                         f".mean()), or pass vectorised_metric=True if it maps [n, batch, pos, d_vocab] to [n]")
    return float(value)


def hook_layer(model, name: str) -> int:
    """The block a hook point belongs to; 0 for the embedding hooks; n_layers for ln_final."""
    point = model.hook_dict.get(name)
    if point is None:
        model._hooks.resolve(name)  # raises UnknownHookError naming the nearest valid hooks
    layer = point.layer()
    if layer is not None:
        return layer
    return model.cfg.n_layers if name.startswith("ln_final") else 0


def _bytes_per_copy(model, batch: int, n_run: int, n_pos: int, n_logit_pos: int) -> int:
    """A generous estimate of the activations one patched copy holds at once during a forward."""
    cfg = model.cfg
    per_token = 6 * cfg.d_model + 4 * cfg.d_mlp + 4 * cfg.n_heads * cfg.d_head + 2 * cfg.n_heads * n_pos
    return int(batch * (n_run * per_token + n_pos * cfg.d_model + n_logit_pos * cfg.d_vocab) * model.dtype.itemsize)


def copies_per_forward(model, batch: int, n_run: int, n_pos: int, n_logit_pos: int, batch_size: int | None,
                       memory_budget: int | None) -> int:
    """How many patched copies share a forward that runs n_run of the input's n_pos positions."""
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        return batch_size
    budget = guard.limit(DEFAULT_MEMORY_BUDGET) if memory_budget is None else memory_budget
    per_copy = _bytes_per_copy(model, batch, n_run, n_pos, n_logit_pos)
    if guard.current() is not None:  # size batches so the guard's own estimate of each forward fits too
        per_copy = max(per_copy, sum(forward_bytes(model, batch, n_run, n_pos, True, n_pos, logits=False).values()))
    copies = max(1, budget // per_copy)
    if model.device.type == "cpu":
        copies = min(copies, max(1, CPU_MAX_TOKENS // (batch * n_run)))
    return copies


def _first_change(patch: Patch, base: dict[str, torch.Tensor], n_pos: int) -> int:
    """The first position a patch changes on the base run (n_pos: it changes nothing)."""
    guard.check_cancelled()  # planning a long sweep takes seconds: stop here too when asked
    first = n_pos
    for edit in patch:
        activation = base[edit.hook]
        changed = (edit.fn(activation.clone()) != activation).movedim(pos_axis(edit.hook), 0).flatten(1).any(1)
        hits = changed.nonzero()
        if len(hits):
            first = min(first, int(hits[0]) if edit.positionwise else 0)
    return first


def _chunk_hooks(model, patches: Sequence[Patch], shared: Sequence[Edit], capture: Sequence[str], start: int,
                 suffix: int, batch: int, base: dict[str, torch.Tensor], store: dict[str, torch.Tensor]):
    """One forward hook per hook point: fill in skipped positions, apply the shared edits to every copy and
    copy i's edits to its rows, keep the captures, and hand back the positions the forward runs."""
    n = len(patches)
    ops: dict[str, list[tuple[int | None, Callable | None]]] = {}
    for edit in shared:
        if hook_layer(model, edit.hook) >= start:
            ops.setdefault(edit.hook, []).append((None, edit.fn))
    for i, patch in enumerate(patches):
        for edit in patch:
            ops.setdefault(edit.hook, []).append((i, edit.fn))
    for name in capture:
        ops.setdefault(name, [])

    def make(name, fns):
        axis = pos_axis(name)
        prefix = None
        if suffix:
            head = base[name].narrow(axis, 0, suffix)
            prefix = head.repeat(n, *[1] * (head.dim() - 1))

        def hook(activation, point):
            # An activation can share storage with the residual stream, so edits work on a copy.
            activation = torch.cat([prefix, activation], dim=axis) if suffix else activation.clone()
            for i, fn in fns:
                for copy in range(max(n, 1)) if i is None else (i,):  # n = 0: the base run, one copy
                    rows = slice(copy * batch, (copy + 1) * batch)
                    activation[rows] = fn(activation[rows])
            if name in capture:
                store[name] = activation.detach()
            return activation.narrow(axis, suffix, activation.shape[axis] - suffix) if suffix else activation
        return hook
    return [(name, make(name, fns)) for name, fns in ops.items()]


def _apply_metric(metric, logits: torch.Tensor, n_copies: int, vectorised: bool) -> torch.Tensor:
    """[n_copies] metric values of logits [n_copies * batch, pos, d_vocab] ([n_copies, batch] per row)."""
    if getattr(metric, "per_row", False):
        values = torch.as_tensor(metric.rows(logits.unflatten(0, (n_copies, -1))))
        return values.double().cpu()
    if vectorised:
        values = torch.as_tensor(metric(logits.unflatten(0, (n_copies, -1))))
        if values.shape != (n_copies,):
            raise ValueError(f"a vectorised metric must map logits [n_copies, batch, pos, d_vocab] to [n_copies] "
                             f"= [{n_copies}], but returned shape {tuple(values.shape)}")
        return values.double().cpu()
    batch = logits.shape[0] // n_copies
    values = [scalar(metric(logits[i * batch:(i + 1) * batch])) for i in range(n_copies)]
    return torch.tensor(values, dtype=torch.float64)


def _kv_prefix(model, base_kv: KVCache, batch: int, start: int, suffix: int, n_copies: int,
               mask: torch.Tensor | None = None) -> KVCache:
    """A KV cache for n_copies copies of the input holding the base run's keys and values of its first
    `suffix` positions at layers start.., written through the cache's own start_step/update/end_step (as a
    forward would); mask [batch, pos]: which of the input's positions are real tokens (None: all)."""
    kv = KVCache(model.cfg, n_copies * batch, base_kv.max_len, model.dtype, model.device)
    kv.start_step(suffix, None if mask is None else mask[:, :suffix].repeat(n_copies, 1))
    for layer in range(start, model.cfg.n_layers):
        keys, values = base_kv.keys[layer], base_kv.values[layer]  # [batch, n_kv_heads, max_len, d_head]
        kv.update(layer, keys[:, :, :suffix].repeat(n_copies, 1, 1, 1),
                  values[:, :, :suffix].repeat(n_copies, 1, 1, 1))
    kv.end_step(suffix)
    return kv


def _block_overhead_tokens(device: torch.device) -> int:
    """A block's fixed cost, in tokens of work: on CPU, reading the block's weights (measured on SmolLM2-135M:
    2.0 ms a block + 0.05 ms a token, so ~40 tokens); on an accelerator, kernel launches (an estimate, not
    measured here)."""
    return 40 if device.type == "cpu" else 1024


def _plans(patches: Sequence[Patch], starts: list[int], base: dict, n_pos: int, n_layers: int,
           by_position_ok: bool, copies_for: Callable[[int], int], overhead: int) -> list[tuple[int, int, list[int]]]:
    """(first layer, first position, patches) runs covering every patch that changes something (the rest
    score the base run's metric). A patch needs layers from its earliest edit and (when by_position_ok)
    positions from the first it changes; patches of neighbouring start layers share a run from the lowest
    of them when the larger batches save more per-block overhead than the extra layers cost."""
    by_start: dict[int, list[tuple[int, int]]] = {}
    for i, (patch, start) in enumerate(zip(patches, starts, strict=True)):
        first = _first_change(patch, base, n_pos)
        if first < n_pos:
            by_start.setdefault(start, []).append((i, first if by_position_ok else 0))
    units = sorted(by_start.items())

    def band(a: int, b: int) -> tuple[float, tuple[int, int, list[int]]]:
        """The run of units a..b-1 and its cost in token-blocks."""
        members = [m for _, unit in units[a:b] for m in unit]
        start, suffix = units[a][0], min(first for _, first in members)
        n_run, n = n_pos - suffix, len(members)
        forwards = -(-n // copies_for(n_run))
        return (n_layers - start) * (forwards * overhead + n * n_run), (start, suffix, [i for i, _ in members])

    best: list[tuple[float, list]] = [(0.0, [])]  # best[j]: the cheapest runs of units 0..j-1
    for b in range(1, len(units) + 1):
        best.append(min(((best[a][0] + cost, [*best[a][1], run]) for a in range(b) for cost, run in [band(a, b)]),
                        key=lambda option: option[0]))
    return best[-1][1]


def _forward_input(model, tokens, base: dict, base_kv: KVCache | None, start: int, suffix: int, n: int) -> dict:
    """The forward arguments for n copies that run layers start.. over positions suffix..."""
    args = {}
    if start:
        resid = base[f"blocks.{start - 1}.hook_resid_post"]  # [batch, pos, d_model] entering layer `start`
        args |= {"input": resid[:, suffix:].repeat(n, 1, 1), "start_at_layer": start}
    else:
        args["input"] = tokens[:, suffix:].repeat(n, 1)
    if suffix:
        args["past_kv_cache"] = _kv_prefix(model, base_kv, tokens.shape[0], start, suffix, n)
    return args


@torch.no_grad()
def run_patches(model, tokens: torch.Tensor, metric, patches: Sequence[Patch], *,
                attention_mask: torch.Tensor | None = None, shared: Sequence[Edit] = (),
                capture: Sequence[str] = (), vectorised: bool | None = None, batch_size: int | None = None,
                memory_budget: int | None = None, progress: bool = True, desc: str = "patching") -> Sweep:
    """The metric for each patch, applied (with the shared edits) to a forward on `tokens` [batch, pos].

    `shared` edits apply to the base run and to every patched copy (path patching freezes heads with
    them). `capture` names hook points whose value in each patched run is returned ([n_patches, batch,
    pos, ...], after the edits). `vectorised`: None = the metric's own `vectorised` attribute.
    """
    tokens = tokens.to(model.device)
    batch, n_pos = tokens.shape
    n_layers = model.cfg.n_layers
    mask = None if attention_mask is None else attention_mask.to(model.device)
    vectorised = bool(getattr(metric, "vectorised", False)) if vectorised is None else vectorised
    starts = [min((hook_layer(model, e.hook) for e in p), default=0) for p in patches]
    if any(s >= n_layers for s in starts):
        raise ValueError("a patch edits the final norm; patch a hook point inside a block instead")
    logit_positions, patched_metric = list(range(n_pos)), metric
    if hasattr(metric, "restrict") and not any(e.hook.startswith("ln_final") for p in [*patches, shared] for e in p):
        logit_positions, patched_metric = metric.restrict(n_pos)

    # The base run: every activation an edit reads, a capture falls back on or a skipped layer or
    # position supplies, and (unpadded inputs) the keys and values of every position.
    final = f"blocks.{n_layers - 1}.hook_resid_post"
    base_kv = KVCache(model.cfg, batch, n_pos, model.dtype, model.device) if mask is None else None
    names = {f"blocks.{s - 1}.hook_resid_post" for s in starts if s > 0} | {e.hook for p in patches for e in p}
    names |= {*capture, final, *(e.hook for e in shared)}
    with model.hooks(fwd_hooks=_chunk_hooks(model, [], shared, (), 0, 0, batch, {}, {})):
        base_logits, cache = model.run_with_cache(tokens, names_filter=sorted(names), attention_mask=mask,
                                                  past_kv_cache=base_kv)
    base = dict(cache.items())
    base_value = scalar(metric(base_logits), "the metric")
    per_row = getattr(metric, "per_row", False)
    base_rows = metric.rows(base_logits).double().cpu() if per_row else None
    def copies_for(n_run: int) -> int:
        return copies_per_forward(model, batch, n_run, n_pos, len(logit_positions), batch_size, memory_budget)
    plans = _plans(patches, starts, base, n_pos, n_layers, base_kv is not None, copies_for,
                   _block_overhead_tokens(model.device))

    values = torch.full((len(patches),), base_value, dtype=torch.float64) if base_rows is None else \
        base_rows.repeat(len(patches), 1)
    captured: dict[str, list] = {name: [base[name]] * len(patches) for name in capture}
    with tqdm(total=len(patches), desc=desc, disable=not progress, leave=False) as bar:
        bar.update(len(patches) - sum(len(group) for *_, group in plans))
        for start, suffix, group in plans:
            copies = copies_for(n_pos - suffix)
            live = [name for name in capture if hook_layer(model, name) >= start]  # earlier ones: as in the base
            for chunk_start in range(0, len(group), copies):
                chunk = group[chunk_start:chunk_start + copies]
                n, store = len(chunk), {}
                hooks = _chunk_hooks(model, [patches[i] for i in chunk], shared, [*live, final], start, suffix,
                                     batch, base, store)
                with model.hooks(fwd_hooks=hooks):
                    model(**_forward_input(model, tokens, base, base_kv, start, suffix, n), return_type=None,
                          attention_mask=None if mask is None else mask.repeat(n, 1))
                logits = model.final_logits(store[final][:, logit_positions])
                values[chunk] = _apply_metric(patched_metric, logits, n, vectorised)
                for name in live:
                    for j, i in enumerate(chunk):
                        captured[name][i] = store[name][j * batch:(j + 1) * batch]
                bar.update(n)
    return Sweep(values, base_value, base_logits, {k: torch.stack(v) for k, v in captured.items() if v}, base_rows)
