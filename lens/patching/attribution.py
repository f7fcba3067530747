"""Attribution patching: the first-order (gradient) estimate of activation patching.

For an activation a, patching the clean value into the corrupted run changes the metric by about
(a_clean - a_corrupted) · ∂metric/∂a, the gradient taken on the corrupted run. One clean forward, one
corrupted forward and one backward give the estimate for every layer, position and head at once; it is
good where the metric is near-linear in a (small patches, e.g. single heads) and poor where it saturates
(e.g. the whole residual stream at a position). Same targets, axes and result as `patch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lens.hooks import act_name
from lens.patching.activation import What, clean_side, corrupted_labels, slot_of
from lens.patching.engine import scalar
from lens.patching.metrics import metric_name
from lens.patching.result import PatchResult, patch_result
from lens.patching.slots import RowSlot


def attribution_patch(model, clean, corrupted=None, metric=None, what: What = "resid_pre",
                      positions: Sequence | None = None, layers: Sequence[int] | None = None, *,
                      top_k: int = 10, per_row: bool = False) -> PatchResult:
    """The gradient estimate of `patch(model, clean, corrupted, metric, what, positions, layers)`: scores are
    the corrupted metric plus (clean - corrupted activation) · gradient, summed over each patched slot.
    Over a lens.data.PromptSet (as `clean`), one forward and one backward of the whole batch give every
    row's estimate (the gradient of the sum of the rows' metrics is each row's own gradient)."""
    side = clean_side(model, clean, corrupted, metric, what, positions, layers)
    spec, metric, over_set = side.spec, side.metric, isinstance(side.clean_value, torch.Tensor)
    hooks = [act_name(spec.hook, l) for l in side.coords[0]]

    corrupted_acts: dict[str, torch.Tensor] = {}

    def leaf(embed, point):  # gradients flow from here, whatever the parameters' requires_grad
        return embed.detach().requires_grad_(True)

    def keep(activation, point):
        corrupted_acts[point.name] = activation
    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)] + [(h, keep) for h in hooks]):
        logits = model(side.corrupted_tokens, attention_mask=side.mask)
        value = metric.rows(logits) if over_set else metric(logits)  # [n_rows] over a set
        corrupted_value = value.detach().double().cpu() if over_set else scalar(value)
        grads = torch.autograd.grad(value.sum(), [corrupted_acts[h] for h in hooks], allow_unused=True)
    estimates = torch.empty(len(side.rows), *(value.shape if over_set else ()), dtype=torch.float64)
    with torch.no_grad():
        delta = {}
        for hook, grad in zip(hooks, grads, strict=True):
            grad = torch.zeros_like(corrupted_acts[hook]) if grad is None else grad
            delta[hook] = (side.clean_cache[hook] - corrupted_acts[hook].detach()).double() * grad.double()
        for i, index in enumerate(side.rows):
            where = slot_of(spec, index, side.fixed, side.masks)
            d = delta[act_name(spec.hook, index[0])]
            in_slot = d * where.indicator(d) if isinstance(where, RowSlot) else d[where]
            estimates[i] = in_slot.flatten(1).sum(1).cpu() if over_set else in_slot.sum()
    shape = [len(c) for c in side.coords]
    if over_set:  # [n_patches, n_rows] → [n_rows, *grid]
        scores = corrupted_value[:, None] + estimates.T
        scores = scores.reshape(len(corrupted_value), *shape)
    else:
        scores = corrupted_value + estimates.view(shape)
    return patch_result("attribution patching (first-order estimate)", what, metric_name(metric), *side.texts,
                        scores, side.clean_value, corrupted_value, side.axes, side.coords, side.labels, top_k,
                        corrupted_str_tokens=corrupted_labels(model, side),
                        per_row=per_row)
