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

from lens.analysis.common import prompt_text, str_tokens
from lens.hooks import act_name
from lens.patching.activation import What, clean_side
from lens.patching.engine import scalar
from lens.patching.metrics import metric_name
from lens.patching.result import PatchResult, patch_result
from lens.patching.slots import layout, slot


def attribution_patch(model, clean, corrupted, metric, what: What = "resid_pre",
                      positions: Sequence[int] | None = None, layers: Sequence[int] | None = None, *,
                      top_k: int = 10) -> PatchResult:
    """The gradient estimate of `patch(model, clean, corrupted, metric, what, positions, layers)`: scores are
    the corrupted metric plus (clean - corrupted activation) · gradient, summed over each patched slot."""
    (clean_tokens, corrupted_tokens, mask, spec, axes, coords, rows, fixed, clean_cache,
     clean_value) = clean_side(model, clean, corrupted, metric, what, positions, layers)
    hooks = [act_name(spec.hook, l) for l in coords[0]]

    corrupted_acts: dict[str, torch.Tensor] = {}

    def leaf(embed, point):  # gradients flow from here, whatever the parameters' requires_grad
        return embed.detach().requires_grad_(True)

    def keep(activation, point):
        corrupted_acts[point.name] = activation
    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)] + [(h, keep) for h in hooks]):
        value = metric(model(corrupted_tokens, attention_mask=mask))
        corrupted_value = scalar(value)
        grads = torch.autograd.grad(value.sum(), [corrupted_acts[h] for h in hooks], allow_unused=True)
    estimates = torch.empty(len(rows), dtype=torch.float64)
    activation_axes = layout(spec.hook)
    with torch.no_grad():
        delta = {}
        for hook, grad in zip(hooks, grads, strict=True):
            grad = torch.zeros_like(corrupted_acts[hook]) if grad is None else grad
            delta[hook] = (clean_cache[hook] - corrupted_acts[hook].detach()).double() * grad.double()
        for i, index in enumerate(rows):
            where = slot(activation_axes, {**fixed, **dict(zip(spec.axes, index[1:], strict=True))})
            estimates[i] = delta[act_name(spec.hook, index[0])][where].sum()
    scores = corrupted_value + estimates.view([len(c) for c in coords])
    return patch_result("attribution patching (first-order estimate)", what, metric_name(metric),
                        prompt_text(model, clean, clean_tokens[:1]),
                        prompt_text(model, corrupted, corrupted_tokens[:1]),
                        scores, clean_value, corrupted_value, axes, coords, str_tokens(model, clean_tokens[:1]),
                        top_k,
                        corrupted_str_tokens=str_tokens(model, corrupted_tokens[:1]))
