"""Which features drive a metric: direct attribution, attribution patching, exact feature patching, ablation.

- Direct attribution: a feature's write at the dictionary's output hook (activation × decoder row),
  through the final norm with its scale frozen from the run, onto the unembedding direction of
  answer − wrong. Features + decoder bias (+ skip) + error term sum to the direct attribution of
  the whole activation at that hook (the `total`), exactly, since a frozen norm is linear.
- Feature patching: patch one feature's activation from the clean run into the corrupted one (the
  error term kept, so nothing else moves). `attribution` is its first-order estimate from one
  backward, (clean − corrupted) × ∂metric/∂activation; `exact` runs the patches on the batched
  patching engine (lens/patching/engine.py), the dictionary spliced, for the top features.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lens.analysis.common import Result, in_range, prompt_text, str_tokens, token_id, token_str
from lens.patching.engine import Edit, run_patches, scalar
from lens.patching.inputs import pair_tokens, to_tokens
from lens.patching.metrics import metric_name
from lens.patching.slots import write_slot
from lens.sae.dictionary import SAE
from lens.sae.splice import hook_shape


class FeatureScore(Result):
    feature: int
    position: int
    token: str
    activation: float
    score: float


class DirectAttributionResult(Result):
    hook: str
    prompt: str
    position: int
    metric: str
    total: float  # the direct attribution of the whole activation at the hook
    error_term: float
    bias: float  # b_dec (and a skip transcoder's skip term)
    features: list[FeatureScore]  # top features by |score|
    sum_of_features: float  # over every active feature

    def summary(self) -> str:
        lines = [f"direct attribution of {self.hook} features to {self.metric} at position {self.position} of "
                 f"{self.prompt!r}: total {self.total:+.3f} = features {self.sum_of_features:+.3f} + error "
                 f"{self.error_term:+.3f} + bias {self.bias:+.3f}"]
        lines += [f"  #{f.feature}: {f.score:+.3f} (activation {f.activation:.2f})" for f in self.features]
        share = abs(self.error_term) / max(abs(self.total), 1e-9)
        if share > 0.5:
            lines.append(f"  note: the error term carries {share:.0%} of the total; the features explain little here")
        return "\n".join(lines)


def _spliced(model, sae: SAE):
    return model.saes(None if sae in model.attached_saes.values() else sae)


@torch.no_grad()
def direct_attribution(model, sae: SAE, prompt, answer: str | int, wrong: str | int | None = None, pos: int = -1,
                       top_k: int = 10) -> DirectAttributionResult:
    """Each active feature's direct effect on logit(answer) − logit(wrong) at `pos`, through the frozen final norm."""
    cfg = sae.cfg
    if hook_shape(model, cfg.out_hook) != (model.cfg.d_model,) or cfg.hook_head_index is not None:
        raise ValueError(f"direct attribution needs a dictionary writing the residual width ({cfg.out_hook} is not)")
    if cfg.normalize_activations in ("layer_norm", "constant_norm_rescale"):
        raise ValueError("direct attribution needs a decoder that is affine in the features; this dictionary "
                         f"un-normalises per token ({cfg.normalize_activations})")
    tokens, _ = to_tokens(model, prompt)
    tokens = tokens[:1]
    pos = in_range(pos, tokens.shape[1], "position", f"a prompt of {tokens.shape[1]} tokens")
    names = [f"{cfg.hook_name}.hook_sae_acts_post", f"{cfg.hook_name}.hook_sae_error", cfg.hook_name, cfg.out_hook,
             "ln_final.hook_scale"]
    with _spliced(model, sae):
        _, cache = model.run_with_cache(tokens, names_filter=sorted(set(names)))
    acts = cache[names[0]][0, pos]  # [d_sae]
    active = acts.nonzero().flatten()
    writes = sae.decode(torch.diag(acts)[active]) - sae.b_dec  # [n_active, d_model]: activation × decoder row
    bias = sae.b_dec[None]
    if "skip" in cfg.architecture:
        bias = bias + sae.skip(cache[cfg.hook_name][0, pos])[None]
    stack = torch.cat([writes, bias, cache[names[1]][0, pos][None], cache[cfg.out_hook][0, pos][None]]).float()
    w = model.weights
    direction = w.unembedding()[:, token_id(model, answer)].float()
    if wrong is not None:
        direction = direction - w.unembedding()[:, token_id(model, wrong)].float()
    if model.cfg.norm == "layernorm":
        stack = stack - stack.mean(-1, keepdim=True)
    scale = cache["ln_final.hook_scale"][0, pos].float()
    scores = (stack / scale * (w.ln_final_w.float() + model.cfg.norm_weight_offset)) @ direction  # [n_active + 3]
    feature_scores, bias_score, error_score, total = scores[:-3], scores[-3], scores[-2], scores[-1]
    order = feature_scores.abs().argsort(descending=True)[:top_k]
    token = str_tokens(model, tokens)[pos]
    label = f"logit({token_str(model, token_id(model, answer))!r})" + (
        "" if wrong is None else f" - logit({token_str(model, token_id(model, wrong))!r})")
    return DirectAttributionResult(
        hook=cfg.hook_name, prompt=prompt_text(model, prompt, tokens), position=pos, metric=label, total=float(total),
        error_term=float(error_score), bias=float(bias_score), sum_of_features=float(feature_scores.sum()),
        features=[FeatureScore(feature=int(active[i]), position=pos, token=token, activation=float(acts[active[i]]),
                               score=float(feature_scores[i])) for i in order])


class PatchedFeature(Result):
    feature: int
    position: int
    token: str
    clean: float
    corrupted: float
    attribution: float  # first-order estimate of the metric change
    exact: float | None  # the metric change when patched on the engine


class FeaturePatchResult(Result):
    hook: str
    metric: str
    clean_value: float
    corrupted_value: float
    features: list[PatchedFeature]

    def summary(self) -> str:
        lines = [f"patching {self.hook} features clean → corrupted, {self.metric}: clean {self.clean_value:+.3f}, "
                 f"corrupted {self.corrupted_value:+.3f}. Top features by estimated effect:"]
        for f in self.features:
            exact = "" if f.exact is None else f", exact {f.exact:+.3f}"
            lines.append(f"  #{f.feature} at {f.position} {f.token!r} ({f.corrupted:.2f} → {f.clean:.2f}): "
                         f"estimate {f.attribution:+.3f}{exact}")
        return "\n".join(lines)


def feature_patch(model, sae: SAE, clean, corrupted, metric, top_k: int = 10, exact: bool = True,
                  positions: Sequence[int] | None = None) -> FeaturePatchResult:
    """Attribution patching over every (position, feature) slot, and exact patching of the top_k."""
    name = f"{sae.cfg.hook_name}.hook_sae_acts_post"
    clean_tokens, corrupted_tokens, mask = pair_tokens(model, clean, corrupted)
    with _spliced(model, sae):
        with torch.no_grad():
            clean_logits, cache = model.run_with_cache(clean_tokens, names_filter=name, attention_mask=mask)
        clean_acts = cache[name]
        kept = {}

        def leaf(x, point):
            return x.detach().requires_grad_(True)

        def keep(x, point):
            kept["acts"] = x
        with torch.enable_grad(), model.hooks([("hook_embed", leaf), (name, keep)]):
            value = metric(model(corrupted_tokens, attention_mask=mask))
            grad, = torch.autograd.grad(value.sum(), kept["acts"])
        corrupted_acts = kept["acts"].detach()
        estimate = ((clean_acts - corrupted_acts).double() * grad.double()).sum(0)  # [pos, d_sae]
        if positions is not None:
            keep_pos = torch.zeros(estimate.shape[0], dtype=torch.bool)
            keep_pos[list(positions)] = True
            estimate[~keep_pos] = 0
        flat = estimate.abs().flatten().argsort(descending=True)[:top_k]
        slots = [(int(i) // estimate.shape[1], int(i) % estimate.shape[1]) for i in flat if estimate.flatten()[i] != 0]
        exact_values = [None] * len(slots)
        base = scalar(value)
        if exact and slots:
            patches = [[Edit(name, write_slot(clean_acts, (slice(None), p, f)))] for p, f in slots]
            sweep = run_patches(model, corrupted_tokens, metric, patches, attention_mask=mask, progress=False)
            exact_values = [float(v) - sweep.base_value for v in sweep.values]
    toks = str_tokens(model, corrupted_tokens[:1])
    return FeaturePatchResult(
        hook=sae.cfg.hook_name, metric=metric_name(metric), clean_value=scalar(metric(clean_logits)),
        corrupted_value=base,
        features=[PatchedFeature(feature=f, position=p, token=toks[p], clean=float(clean_acts[0, p, f]),
                                 corrupted=float(corrupted_acts[0, p, f]), attribution=float(estimate[p, f]),
                                 exact=e) for (p, f), e in zip(slots, exact_values, strict=True)])


class AblationEffect(Result):
    features: list[int]
    value: float
    change: float


class FeatureAblationResult(Result):
    hook: str
    metric: str
    base_value: float
    effects: list[AblationEffect]

    def summary(self) -> str:
        lines = [f"zero-ablating {self.hook} features (error term kept), {self.metric} = {self.base_value:+.3f}:"]
        lines += [f"  {e.features}: {e.value:+.3f} ({e.change:+.3f})" for e in self.effects]
        return "\n".join(lines)


def ablate_features(model, sae: SAE, prompt, features: Sequence[int], metric, together: bool = True,
                    positions: Sequence[int] | None = None) -> FeatureAblationResult:
    """The metric with each feature (and, with `together`, all of them at once) zeroed at `positions` (None: all)."""
    features = [in_range(f, sae.cfg.d_sae, "feature", f"a dictionary of {sae.cfg.d_sae} features") for f in features]
    name = f"{sae.cfg.hook_name}.hook_sae_acts_post"
    tokens, mask = to_tokens(model, prompt)
    where_pos = slice(None) if positions is None else list(positions)
    groups = [[f] for f in features] + ([features] if together and len(features) > 1 else [])
    patches = [[Edit(name, write_slot(0.0, (slice(None), where_pos, g)))] for g in groups]
    with _spliced(model, sae):
        sweep = run_patches(model, tokens, metric, patches, attention_mask=mask, progress=False)
    return FeatureAblationResult(hook=sae.cfg.hook_name, metric=metric_name(metric), base_value=sweep.base_value,
                                 effects=[AblationEffect(features=g, value=float(v), change=float(v) - sweep.base_value)
                                          for g, v in zip(groups, sweep.values, strict=True)])
