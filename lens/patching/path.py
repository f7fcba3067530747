"""Path patching: the effect of sender components on receiver components along one path only.

The experiment behind the IOI circuit (Wang et al. 2022), in the direction activation patching uses here
(clean values into the corrupted run). For each sender (set):
1. Run the corrupted input with the sender's output (head z, MLP or attention output) taken from the clean
   run and every other head's z frozen at its corrupted value (and every MLP's output too with
   freeze_mlps=True), so the sender's effect reaches later layers only through the residual stream
   (and, by default, through the MLPs it passes). Record the receivers' inputs: a head's q, k or v
   (the projection of its input, hook_q/k/v), an MLP's output (a function of its input only), or the
   logits themselves.
2. Run the corrupted input again with only the receivers' inputs replaced by the recorded ones; the metric
   of that run is the score. With "logits" as the receiver, step 1's logits are the answer.
Both steps are batched sweeps on lens/patching/engine.py. A k/v receiver under grouped-query attention is
its kv head (shared by the group). A sender that cannot reach any receiver (same or later layer) scores
exactly the corrupted value and is not run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lens.analysis.common import all_in_range, str_tokens
from lens.hooks import act_name
from lens.patching.activation import set_positions
from lens.patching.components import Component, distinct, parse
from lens.patching.engine import Edit, run_patches, scalar
from lens.patching.inputs import pair_or_set, sweep_scores
from lens.patching.metrics import metric_name
from lens.patching.result import PatchResult, patch_result
from lens.patching.slots import HEAD_VECTOR, RESID, slot, write_slot

SENDER_KINDS = ("head", "mlp", "attn")
RECEIVER_KINDS = ("head", "mlp", "logits")


def _as_list(specs) -> list:
    single = isinstance(specs, (str, Component)) or (
        isinstance(specs, tuple) and specs and (isinstance(specs[0], int) or specs[0] in ("mlp", "attn")))
    return [specs] if single else list(specs)


def _reaches(model, sender: Component, receiver: Component) -> bool:
    if receiver.kind == "logits":
        return True
    same_layer_ok = (receiver.kind == "mlp" and sender.kind in ("head", "attn")
                     and not model.cfg.parallel_attn_mlp)  # a sequential block's MLP reads its attention
    return sender.layer < receiver.layer or (sender.layer == receiver.layer and same_layer_ok)


def _check_senders(model, senders: list[Component], receivers: list[Component]) -> None:
    """Listed senders: at least one, each a head / MLP / attention layer, each once, each before a receiver."""
    if not senders:
        raise ValueError("senders is empty: list at least one component ('L5H5', 'L3.mlp', 'L3.attn'), or give "
                         "'heads' or 'mlps' to sweep them all")
    if any(s.kind not in SENDER_KINDS for s in senders):
        raise ValueError(f"senders are heads, MLPs or attention layers, not {[s.name for s in senders]}")
    distinct(senders, "sender")
    late = [s.name for s in senders if not any(_reaches(model, s, r) for r in receivers)]
    if late:
        raise ValueError(f"senders {late} sit at or after the layer of every receiver "
                         f"({', '.join(r.name for r in receivers)}), so no path runs from them to a receiver; "
                         f"a sender must be in an earlier layer (or, for an MLP receiver, the same layer's attention)")


def _output_hook(component: Component) -> str:
    return act_name({"head": "z", "mlp": "mlp_out", "attn": "attn_out"}[component.kind], component.layer)


def _receiver_slots(model, receiver: Component, fixed: dict) -> list[tuple[str, tuple]]:
    """(hook, index) pairs a receiver's inputs occupy."""
    if receiver.kind == "mlp":
        return [(act_name("mlp_out", receiver.layer), slot(RESID, fixed))]
    group = model.cfg.n_heads // model.cfg.n_kv_heads
    return [(act_name(letter, receiver.layer),
             slot(HEAD_VECTOR, {**fixed, "head": receiver.index if letter == "q" else receiver.index // group}))
            for letter in receiver.inputs]


def path_patch(model, clean, corrupted=None, metric=None, receivers="logits", senders="heads", *,
               together: bool = False, positions: Sequence | None = None, freeze_mlps: bool = False,
               top_k: int = 10, per_row: bool = False, vectorised_metric: bool | None = None,
               batch_size: int | None = None, memory_budget: int | None = None,
               progress: bool = True) -> PatchResult:
    """Path patching from each sender to the receivers (see the module docstring).

    receivers: "L9H6.q" (a head's query; also .k, .v, .qkv = all three), (9, 6, "q"), "L9.mlp", or "logits"
    (the direct path to the output; alone), or a list of those.
    senders: "heads" (every head: a [layer, head] grid), "mlps" (every MLP: [layer]), or a list of
    components ("L5H5", (5, 5), "L3.mlp", "L3.attn") scored one by one, or all at once with together=True.
    positions: where senders and receivers are patched (None = every position).
    freeze_mlps: also hold every MLP at its corrupted output, so only direct paths count.
    A lens.data.PromptSet as `clean` (no corrupted; metric a kind or None): every row at once, positions
    by name, the result the mean over rows with its spread (per_row keeps every row).
    """
    clean_tokens, corrupted_tokens, mask, metric, ps, texts = pair_or_set(model, clean, corrupted, metric)
    cfg, n_pos = model.cfg, corrupted_tokens.shape[1]
    receivers = [parse(model, r) for r in _as_list(receivers)]
    if any(r.kind not in RECEIVER_KINDS for r in receivers):
        raise ValueError(f"receivers are heads' inputs, MLPs or 'logits', not {[r.name for r in receivers]}")
    if any(r.kind == "logits" for r in receivers) and len(receivers) > 1:
        raise ValueError("'logits' is a receiver on its own (the direct path to the output); path-patch the other "
                         "receivers in a separate call")
    distinct(receivers, "receiver")
    if senders == "heads":
        sender_sets = [[Component("head", l, h)] for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
        axes, coords, names = ["layer", "head"], [list(range(cfg.n_layers)), list(range(cfg.n_heads))], None
    elif senders == "mlps":
        sender_sets = [[Component("mlp", l)] for l in range(cfg.n_layers)]
        axes, coords, names = ["layer"], [list(range(cfg.n_layers))], None
    else:
        listed = [parse(model, s) for s in _as_list(senders)]
        _check_senders(model, listed, receivers)
        sender_sets = [listed] if together else [[s] for s in listed]
        axes, coords = ([], []) if together else (["component"], [list(range(len(listed)))])
        names = None if together else [s.name for s in listed]

    fixed = {} if positions is None else \
        {"pos": all_in_range(positions, n_pos, "position", f"a prompt of {n_pos} tokens")} if ps is None else \
        {"pos": torch.stack([ps.position_mask(p) for p in set_positions(ps, positions)]).any(0)}
    receiver_mlps = {r.layer for r in receivers if r.kind == "mlp"}
    sender_hooks = sorted({_output_hook(s) for group in sender_sets for s in group})
    frozen = [act_name("z", l) for l in range(cfg.n_layers)]
    if freeze_mlps:
        frozen += [act_name("mlp_out", l) for l in range(cfg.n_layers) if l not in receiver_mlps]
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=sender_hooks, attention_mask=mask)
        _, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=frozen, attention_mask=mask)
    clean_value = scalar(metric(clean_logits)) if ps is None else metric.rows(clean_logits).double().cpu()
    freeze = [Edit(hook, write_slot(corrupted_cache[hook], (slice(None),))) for hook in frozen]

    def sender_edit(s: Component) -> Edit:
        where = slot(HEAD_VECTOR, {**fixed, "head": s.index}) if s.kind == "head" else slot(RESID, fixed)
        return Edit(_output_hook(s), write_slot(clean_cache[_output_hook(s)], where))

    live = [i for i, group in enumerate(sender_sets) if any(_reaches(model, s, r) for s in group for r in receivers)]
    receiver_slots = [] if receivers[0].kind == "logits" else \
        [pair for r in receivers for pair in _receiver_slots(model, r, fixed)]
    options = {"attention_mask": mask, "vectorised": vectorised_metric, "batch_size": batch_size,
               "memory_budget": memory_budget, "progress": progress}
    step1 = run_patches(model, corrupted_tokens, metric, [[sender_edit(s) for s in sender_sets[i]] for i in live],
                        shared=freeze, capture=sorted({hook for hook, _ in receiver_slots}),
                        desc="path patching: senders", **options)
    values = step1.values
    if receiver_slots:
        step2 = [[Edit(hook, write_slot(step1.captured[hook][j], where)) for hook, where in receiver_slots]
                 for j in range(len(live))]
        values = run_patches(model, corrupted_tokens, metric, step2, desc="path patching: receivers",
                             **options).values
    corrupted_value = step1.base_value if ps is None else step1.base_rows
    scores = torch.as_tensor(corrupted_value, dtype=torch.float64).repeat(len(sender_sets), *[1] * (ps is not None))
    scores[live] = values
    scores = sweep_scores(scores, [len(c) for c in coords])
    what = (senders if isinstance(senders, str) else ", ".join(s.name for group in sender_sets for s in group)) + \
        " → " + ", ".join(r.name for r in receivers)
    return patch_result(f"path patching{' (direct paths only)' if freeze_mlps else ''}", what, metric_name(metric),
                        *texts, scores, clean_value, corrupted_value, axes, coords,
                        str_tokens(model, clean_tokens[:1]), top_k, names, per_row=per_row,
                        corrupted_str_tokens=None if ps is not None else str_tokens(model, corrupted_tokens[:1]))
