"""Ablation: zero, mean or resample ablation of heads, neurons, MLP layers and attention layers, and the
change it makes to a metric.

What is replaced: a head's z (so its output, hook_result, is zero under zero ablation; the attention
bias b_O stays), a neuron's activation (mlp.hook_post), an MLP layer's output (mlp_out), an attention
layer's output (attn_out). Replacement values:
- zero: 0.
- mean: the component's mean activation over a reference batch, per position (`mean_over="batch"`, the
  reference must have the prompt's length) or over positions too (`mean_over="batch_and_pos"`).
- resample: the component's activation on a reference prompt: each prompt row takes a reference row
  drawn at random (seeded), the same draw for every component.
Components are ablated one at a time (a sweep, batched on lens/patching/engine.py) or all together.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from lens.analysis.common import all_in_range, prompt_text, str_tokens
from lens.data.stats import grid_spread
from lens.hooks import act_name
from lens.patching.activation import set_positions
from lens.patching.components import Component, distinct, parse
from lens.patching.engine import Edit, run_patches
from lens.patching.inputs import sweep_scores, to_tokens
from lens.patching.metrics import metric_name
from lens.patching.result import AblationResult, hotspots
from lens.patching.slots import HEAD_VECTOR, NEURON, RESID, slot, write_slot

Method = Literal["zero", "mean", "resample"]
AblationTarget = Literal["heads", "neurons", "mlp", "attn"]
KIND_OF = {"heads": "head", "neurons": "neuron", "mlp": "mlp", "attn": "attn"}
HOOK_OF = {"head": "z", "neuron": "post", "mlp": "mlp_out", "attn": "attn_out"}


def _where(component: Component, fixed: dict) -> tuple:
    if component.kind == "head":
        return slot(HEAD_VECTOR, {**fixed, "head": component.index})
    if component.kind == "neuron":
        return slot(NEURON, {**fixed, "neuron": component.index})
    return slot(RESID, fixed)


def _replacements(model, method: Method, hooks: list[str], reference, n_rows: int, n_pos: int, mean_over: str,
                  seed: int) -> dict[str, torch.Tensor | float]:
    """hook → the values ablation writes ([1 or n_rows, pos or 1, ...], or 0.0)."""
    if method == "zero":
        return {hook: 0.0 for hook in hooks}
    if method not in ("mean", "resample"):
        raise ValueError(f"method must be 'zero', 'mean' or 'resample', not {method!r}")
    if reference is None:
        raise ValueError(f"{method} ablation needs a reference batch: pass reference= prompts (or token ids) whose "
                         f"activations stand in for the ablated ones")
    ref_tokens, ref_mask = to_tokens(model, reference)
    if ref_mask is not None:
        raise ValueError("the reference prompts must all have the same token count (no padding)")
    per_position = method == "resample" or mean_over == "batch"
    if per_position and ref_tokens.shape[1] != n_pos:
        hint = " or mean_over='batch_and_pos'" if method == "mean" else ""
        raise ValueError(f"the reference has {ref_tokens.shape[1]} tokens and the prompt {n_pos}; {method} ablation "
                         f"per position needs the same length (pass a reference of that length{hint})")
    with torch.no_grad():
        _, cache = model.run_with_cache(ref_tokens, names_filter=hooks)
    if method == "resample":
        rows = torch.randint(0, ref_tokens.shape[0], (n_rows,), generator=torch.Generator().manual_seed(seed))
        return {hook: cache[hook][rows.to(cache[hook].device)] for hook in hooks}
    if mean_over not in ("batch", "batch_and_pos"):
        raise ValueError(f"mean_over must be 'batch' or 'batch_and_pos', not {mean_over!r}")
    if mean_over == "batch":
        return {hook: cache[hook].mean(0, keepdim=True) for hook in hooks}
    means = {hook: cache[hook].mean((0, 1), keepdim=True) for hook in hooks}  # [1, 1, ...]
    return {hook: m.expand(1, n_pos, *m.shape[2:]) for hook, m in means.items()}


def ablation_edits(model, components: Sequence[Component], method: Method, n_rows: int, n_pos: int, *,
                   positions: Sequence[int] | torch.Tensor | None = None, reference=None,
                   mean_over: Literal["batch", "batch_and_pos"] = "batch", seed: int = 0) -> list[Edit]:
    """One edit per component, ablating it in a forward on an input of n_rows × n_pos tokens. positions: indices,
    or a [n_rows, n_pos] bool mask (each row its own positions, as a prompt set's names give)."""
    if model.cfg.n_experts and any(c.kind == "neuron" for c in components):
        raise ValueError("a mixture-of-experts MLP has no neuron hook points; ablate the MLP layer instead")
    hooks = sorted({act_name(HOOK_OF[c.kind], c.layer) for c in components})
    values = _replacements(model, method, hooks, reference, n_rows, n_pos, mean_over, seed)
    fixed = {} if positions is None else {"pos": positions} if isinstance(positions, torch.Tensor) else \
        {"pos": all_in_range(positions, n_pos, "position", f"a prompt of {n_pos} tokens")}
    return [Edit(hook, write_slot(values[hook], _where(c, fixed)))
            for c, hook in ((c, act_name(HOOK_OF[c.kind], c.layer)) for c in components)]


def ablation_hooks(model, components, prompt, method: Method = "zero", **options) -> list[tuple[str, Callable]]:
    """Forward hooks that ablate `components` (names as for ablate) all together in a forward on `prompt`:
    `model.run_with_hooks(prompt, fwd_hooks=ablation_hooks(model, ["L9H6"], prompt))`. Options as ablate's
    (positions, reference, mean_over, seed)."""
    tokens, _ = to_tokens(model, prompt)
    edits = ablation_edits(model, [parse(model, c) for c in components], method, *tokens.shape, **options)
    return [(edit.hook, lambda activation, hook, edit=edit: edit.fn(activation.clone())) for edit in edits]


def ablate(model, prompt, metric=None, what: AblationTarget = "heads", method: Method = "zero",
           components: Sequence | None = None, *, positions: Sequence | None = None, reference=None,
           mean_over: Literal["batch", "batch_and_pos"] = "batch", together: bool = False, seed: int = 0,
           top_k: int = 10, per_row: bool = False, vectorised_metric: bool | None = None,
           batch_size: int | None = None, memory_budget: int | None = None, progress: bool = True) -> AblationResult:
    """The metric on `prompt` with each component ablated (see the module docstring).

    what: "heads" ([layer, head]), "neurons" ([layer, neuron]), "mlp" or "attn" ([layer]), swept over every
    one of them; or name `components` ("L9H6", (9, 6), "L3N1031", "L3.mlp", "L3.attn") to sweep just those,
    or ablate them all at once with together=True. positions: ablate only there (None = every position).
    The result's scores are the ablated metric, `effects` the change from the unablated one.
    A lens.data.PromptSet as `prompt` (its clean prompts; metric a kind or None, positions by name): every
    row at once; scores are means over rows, the spread that of each row's effect (per_row keeps them).
    """
    from lens.data.metrics import as_row_metric
    from lens.data.prompt_set import PromptSet
    cfg = model.cfg
    ps = prompt if isinstance(prompt, PromptSet) else None
    if ps is not None:
        tokens, mask, metric = ps.clean_tokens.to(model.device), None, as_row_metric(ps, metric)
        if positions is not None:
            positions = torch.stack([ps.position_mask(p) for p in set_positions(ps, positions)]).any(0)
    elif metric is None:
        raise ValueError("give a metric (e.g. lens.patching.logit_diff(model, ' Mary', ' John')), or a "
                         "lens.data.PromptSet as the prompt")
    else:
        tokens, mask = to_tokens(model, prompt)
    names = None
    if components is None:
        if what not in KIND_OF:
            raise ValueError(f"what={what!r}: valid are {', '.join(KIND_OF)}")
        kind = KIND_OF[what]
        sizes = {"head": [cfg.n_heads], "neuron": [cfg.d_mlp]}.get(kind, [])
        axes = ["layer"] + {"head": ["head"], "neuron": ["neuron"]}.get(kind, [])
        coords = [list(range(cfg.n_layers))] + [list(range(s)) for s in sizes]
        listed = [Component(kind, index[0], index[1] if len(index) > 1 else None)
                  for index in itertools.product(*coords)]
    else:
        listed = [parse(model, c) for c in components]
        if not listed:
            raise ValueError("components is empty: list at least one ('L9H6', 'L3.mlp', 'L3.attn', 'L3N1031'), or "
                             "leave it out to sweep every one of what=")
        if any(c.kind not in HOOK_OF for c in listed):
            raise ValueError(f"ablate takes heads, neurons, MLP and attention layers, not {[c.name for c in listed]}")
        distinct(listed, "component")
        axes, coords = ["component"], [list(range(len(listed)))]
        names = [c.name for c in listed]
        what = ", ".join(names) if together else "the listed components"
    if together:
        axes, coords, names = [], [], None
    edits = ablation_edits(model, listed, method, *tokens.shape, positions=positions, reference=reference,
                           mean_over=mean_over, seed=seed)
    patches = [edits] if together else [[edit] for edit in edits]
    sweep = run_patches(model, tokens, metric, patches, attention_mask=mask, vectorised=vectorised_metric,
                        batch_size=batch_size, memory_budget=memory_budget, progress=progress,
                        desc=f"{method} ablation")
    scores = sweep_scores(sweep.values, [len(c) for c in coords])
    tokens_str = str_tokens(model, tokens[:1])
    cells = row_scores = None
    if ps is not None:  # the spread of each row's effect, ablated_i - unablated_i
        row_scores = scores
        effects = row_scores - sweep.base_rows.view(-1, *[1] * (row_scores.dim() - 1))
        scores, cells = row_scores.mean(0), grid_spread(effects, per_row)[1]
    text = prompt_text(model, prompt, tokens[:1]) if ps is None else \
        ps.rows[0].clean + (f" (+{len(ps) - 1} more)" if len(ps) > 1 else "")
    return AblationResult(
        method=method, what=what, metric=metric_name(metric), prompt=text,
        axes=axes, coords=coords, scores=scores.tolist(), baseline=sweep.base_value, str_tokens=tokens_str,
        names=names, n_rows=1 if ps is None else len(ps), spread=cells,
        row_scores=row_scores.tolist() if per_row and row_scores is not None else None,
        top=hotspots(scores, sweep.base_value, axes, coords, tokens_str, top_k, names=names, cells=cells,
                     cell_means=None if cells is None else scores - sweep.base_value))
