"""Steering with activation addition: a contrast vector from prompt pairs, added while generating.

`steering_vector` is the mean difference of one hook's activations between positive
and negative prompts ("activation addition", Turner et al. 2023); `steer` adds
coefficient × vector at that hook while the model generates and reports, per
coefficient, the text and how the logits of chosen tokens moved at the prompt's end.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from lens.analysis.common import (
    Result,
    in_range,
    prompt_text,
    prompt_tokens,
    token_id,
    token_str,
)
from lens.hooks import act_name

Position = Literal["mean", "last"]
SteerPositions = Literal["all", "prompt", "generated"]


@torch.no_grad()
def steering_vector(model, positive_prompts: Sequence[str] | str, negative_prompts: Sequence[str] | str,
                    layer: int, hook: str = "resid_post", position: Position = "mean") -> torch.Tensor:
    """[d_model]: mean activation at `hook` of `layer` over the positive prompts minus that over
    the negative ones; each prompt contributes its mean over positions ("mean") or its last
    position ("last")."""
    if position not in ("mean", "last"):
        raise ValueError(f"position must be 'mean' or 'last', not {position!r}")
    layer = in_range(layer, model.cfg.n_layers, "layer", f"a model of {model.cfg.n_layers} layers")
    name = act_name(hook, layer)
    if name not in model.hook_dict:
        model._hooks.resolve(name)  # raises, naming the valid hooks
    sides = []
    for prompts in (positive_prompts, negative_prompts):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("steering_vector needs at least one positive and one negative prompt")
        readings = []
        for prompt in prompts:
            _, cache = model.run_with_cache(prompt_tokens(model, prompt), names_filter=name,
                                            stop_at_layer=layer + 1)
            acts = cache[name][0]  # [pos, d_model]
            if acts.shape[-1] != model.cfg.d_model:
                raise ValueError(f"{name} has width {acts.shape[-1]}, not d_model; steer a residual-width hook "
                                 f"(resid_pre, resid_mid, resid_post, attn_out, mlp_out)")
            readings.append(acts.mean(0) if position == "mean" else acts[-1])
        sides.append(torch.stack(readings).mean(0))
    return sides[0] - sides[1]


class SteeredGeneration(Result):
    coefficient: float
    text: str  # the continuation only
    logit_shifts: dict[str, float]  # token → steered − unsteered logit at the prompt's last position


class SteeringResult(Result):
    prompt: str
    hook: str
    positions: str
    vector_norm: float
    generations: list[SteeredGeneration]

    def summary(self) -> str:
        lines = [f"steering {self.hook} (|vector| {self.vector_norm:.2f}, positions: {self.positions}) "
                 f"on {self.prompt!r}"]
        for g in self.generations:
            shifts = ", ".join(f"{tok!r} {shift:+.2f}" for tok, shift in g.logit_shifts.items())
            lines.append(f"  ×{g.coefficient:g}: {g.text!r}" + (f"   logit shifts: {shifts}" if shifts else ""))
        return "\n".join(lines)


def steering_hook(vector: torch.Tensor, coefficient: float, positions: SteerPositions | Sequence[int],
                  prompt_len: int):
    """A forward hook adding coefficient × vector at the chosen absolute positions (see hook.ctx)."""
    def add(x: torch.Tensor, hook) -> torch.Tensor:
        delta = (coefficient * vector).to(x.dtype)
        if positions == "all":
            return x + delta
        pos = hook.ctx.positions  # [batch, pos] absolute positions of this step
        if positions == "prompt":
            where = pos < prompt_len
        elif positions == "generated":
            where = pos >= prompt_len
        else:
            where = torch.isin(pos, torch.as_tensor(list(positions), device=pos.device))
        return x + where[..., None].to(x.dtype) * delta
    return add


def steer(model, prompt: str, vector: torch.Tensor, layer: int, coefficients: Sequence[float] = (0.0, 4.0, 8.0),
          hook: str = "resid_post", positions: SteerPositions | Sequence[int] = "all", max_new_tokens: int = 20,
          seed: int = 0, do_sample: bool = False, temperature: float = 1.0,
          tokens: Sequence[str | int] = ()) -> SteeringResult:
    """Generate from `prompt` with coefficient × vector added at `hook` of `layer`, once per coefficient.

    positions: "all", "prompt" (the prompt's positions only), "generated", or a list of absolute
    positions. Greedy by default; with do_sample each coefficient samples with the same seed.
    `tokens`: report how much each one's logit at the prompt's last position moves."""
    layer = in_range(layer, model.cfg.n_layers, "layer", f"a model of {model.cfg.n_layers} layers")
    name = act_name(hook, layer)
    model._hooks.resolve(name)
    vector = torch.as_tensor(vector, device=model.device).detach()
    if vector.shape != (model.cfg.d_model,):
        raise ValueError(f"the steering vector must have shape [d_model] = [{model.cfg.d_model}], "
                         f"not {list(vector.shape)}")
    if positions not in ("all", "prompt", "generated") and isinstance(positions, str):
        raise ValueError(f"positions must be 'all', 'prompt', 'generated' or a list of positions, not {positions!r}")
    ids = prompt_tokens(model, prompt)
    return steer_with_hooks(
        model, ids, lambda c: [(name, steering_hook(vector, c, positions, ids.shape[1]))], coefficients, name,
        positions if isinstance(positions, str) else str(list(positions)), float(vector.norm()), prompt,
        max_new_tokens, seed, do_sample, temperature, tokens)


def steer_with_hooks(model, ids: torch.Tensor, make_hooks, coefficients: Sequence[float], hook: str, positions: str,
                     vector_norm: float, prompt=None, max_new_tokens: int = 20, seed: int = 0, do_sample: bool = False,
                     temperature: float = 1.0, tokens: Sequence[str | int] = ()) -> SteeringResult:
    """What steer() does with any hooks: `make_hooks(coefficient)` gives the forward hooks of one
    generation (e.g. clamping a dictionary feature, lens/sae/steering.py)."""
    token_ids = [token_id(model, t) for t in tokens]
    with torch.no_grad():
        base_logits = model(ids)[0, -1]
    generations = []
    for coefficient in coefficients:
        hooks = make_hooks(float(coefficient))
        with torch.no_grad(), model.hooks(hooks):
            logits = model(ids)[0, -1]
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                 seed=seed, verbose=False)
        text = model.to_string(out[0, ids.shape[1]:]) if model.tokenizer is not None else str(
            out[0, ids.shape[1]:].tolist())
        shifts = {token_str(model, t): float(logits[t] - base_logits[t]) for t in token_ids}
        generations.append(SteeredGeneration(coefficient=float(coefficient), text=text, logit_shifts=shifts))
    return SteeringResult(prompt=prompt_text(model, ids if prompt is None else prompt, ids), hook=hook,
                          positions=positions, vector_norm=vector_norm, generations=generations)
