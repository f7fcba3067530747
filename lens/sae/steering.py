"""Steering with a feature: add its decoder direction, or clamp its activation, while the model generates.

Both go through lens.analysis.steering (the same generation loop, report and logit shifts):
- "add": coefficient × W_dec[feature] added at the dictionary's output hook (no splice needed);
- "clamp": the dictionary spliced with its error term and the feature's activation set to the
  coefficient at every position, so the output moves by (coefficient − activation) × W_dec[feature].
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from lens.analysis.common import Result, in_range, prompt_tokens, token_id
from lens.analysis.steering import SteeringResult, steer_with_hooks, steering_hook
from lens.sae.dictionary import SAE
from lens.sae.splice import hook_shape

SteerMode = Literal["add", "clamp"]


def steer_feature(model, sae: SAE, prompt: str, feature: int, mode: SteerMode = "add",
                  coefficients: Sequence[float] = (0.0, 4.0, 8.0), max_new_tokens: int = 20,
                  tokens: Sequence[str | int] = (), seed: int = 0, do_sample: bool = False) -> SteeringResult:
    """Generate from `prompt` with `feature` added ("add") or clamped ("clamp") at each coefficient, all
    coefficients in one batched generation (lens.analysis.steering.steer_with_hooks)."""
    if mode not in ("add", "clamp"):
        raise ValueError(f"mode must be 'add' or 'clamp', not {mode!r}")
    feature = in_range(feature, sae.cfg.d_sae, "feature", f"a dictionary of {sae.cfg.d_sae} features")
    ids = prompt_tokens(model, prompt)
    settings = [(None, float(c)) for c in coefficients]
    if mode == "add":
        if hook_shape(model, sae.cfg.out_hook) != (model.cfg.d_model,) or sae.cfg.hook_head_index is not None:
            raise ValueError(f"adding a decoder direction needs a residual-width hook; {sae.cfg.out_hook} is not "
                             f"(clamp the feature instead: mode='clamp')")
        vector = sae.W_dec[feature].detach().to(model.device, model.dtype)  # [d_model]
        hook = sae.cfg.out_hook

        def add(settings):
            coef = torch.tensor([0.0] + [c for _, c in settings], device=model.device)  # row 0 unsteered
            return [(hook, steering_hook(vector, coef, "all", ids.shape[1]))]
        return steer_with_hooks(model, ids, add, settings, f"{hook} += c × W_dec[{feature}]", "all",
                                float(vector.norm()), prompt, max_new_tokens, seed, do_sample, 1.0, tokens)
    name = f"{sae.cfg.hook_name}.hook_sae_acts_post"

    def clamp(settings):
        values = torch.tensor([c for _, c in settings])  # row 1 + k clamps to settings[k]; row 0 is unsteered

        def hook(acts, point):  # acts: [batch, pos, d_sae]
            acts = acts.clone()
            acts[1:, ..., feature] = values.to(acts.device, acts.dtype).view(-1, *[1] * (acts.dim() - 2))
            return acts
        return [(name, hook)]
    with model.saes(None if sae in model.attached_saes.values() else sae):
        return steer_with_hooks(model, ids, clamp, settings, f"{name}[{feature}] := c", "all",
                                float(sae.W_dec[feature].norm()), prompt, max_new_tokens, seed, do_sample, 1.0, tokens)


def decoder_direction(sae: SAE, feature: int) -> torch.Tensor:
    """[d_in or d_out]: the feature's decoder row, what adding the feature writes per unit of activation."""
    return sae.W_dec[in_range(feature, sae.cfg.d_sae, "feature", f"a dictionary of {sae.cfg.d_sae} features")]


class TokenSetEffect(Result):
    hook: str
    feature: int
    targets: list[str]
    n_prompts: int
    clean: float  # mean over prompts of P(next token ∈ targets)
    ablated: float  # the feature zeroed at every position (spliced with the error term)
    coefficient: float
    steered: float  # coefficient × W_dec[feature] added at every position

    def summary(self) -> str:
        return (f"P(next token is one of {len(self.targets)} targets) over {self.n_prompts} prompts: clean "
                f"{self.clean:.3f}, feature #{self.feature} ablated {self.ablated:.3f} "
                f"({self.ablated / self.clean - 1:+.0%}), added ×{self.coefficient:g} {self.steered:.3f} "
                f"({self.steered / self.clean - 1:+.0%})")


@torch.no_grad()
def token_set_effect(model, sae: SAE, prompts: Sequence[str], feature: int, targets: Sequence[str],
                     coefficient: float) -> TokenSetEffect:
    """Causal check of a feature read as "predicts / marks these tokens": the probability mass on `targets`
    (single tokens, e.g. city names) at each prompt's next position, clean, with the feature ablated, and
    with its decoder direction added × coefficient."""
    feature = in_range(feature, sae.cfg.d_sae, "feature", f"a dictionary of {sae.cfg.d_sae} features")
    ids = torch.tensor([token_id(model, t) for t in targets])
    vector = sae.W_dec[feature].detach().to(model.device, model.dtype)
    acts_name = f"{sae.cfg.hook_name}.hook_sae_acts_post"

    def zero(acts, point):
        acts = acts.clone()
        acts[..., feature] = 0
        return acts
    runs = {"clean": [], "ablated": [], "steered": []}
    for prompt in prompts:
        tokens = prompt_tokens(model, prompt)
        with model.saes(None if sae in model.attached_saes.values() else sae):
            ablated = model.run_with_hooks(tokens, fwd_hooks=[(acts_name, zero)])
        steered = model.run_with_hooks(tokens, fwd_hooks=[(sae.cfg.out_hook, lambda x, point: x + coefficient * vector)])
        for name, logits in (("clean", model(tokens)), ("ablated", ablated), ("steered", steered)):
            runs[name].append(float(logits[0, -1].float().softmax(-1)[ids.to(logits.device)].sum()))
    mean = {k: sum(v) / len(v) for k, v in runs.items()}
    return TokenSetEffect(hook=sae.cfg.out_hook, feature=feature, targets=list(targets), n_prompts=len(prompts),
                          coefficient=coefficient, **mean)
