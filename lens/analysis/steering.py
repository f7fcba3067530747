"""Steering with activation addition: a contrast vector from prompt pairs, added while generating.

`steering_vector` is the mean difference of one hook's activations between positive
and negative prompts ("activation addition", Turner et al. 2023); `steer` adds
coefficient × vector at that hook while the model generates and reports, per
coefficient, the text and how the logits of chosen tokens moved at the prompt's end.

`steer` runs every coefficient (and every layer, when given several) as one row of a
single batched generation, plus an unsteered row the logit shifts are measured
against: K settings cost one generation of K + 1 rows, not K generations.
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
    layer: int | None  # None where the setting is not a layer's (a dictionary feature)
    text: str  # the continuation only
    logit_shifts: dict[str, float]  # token → steered − unsteered logit at the prompt's last position
    metric_shift: float | None = None  # with answer/baseline: the shift of logit(answer) − logit(baseline) there


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
            where = f"L{g.layer} " if len({h.layer for h in self.generations}) > 1 else ""
            moved = "" if g.metric_shift is None else f"   metric shift {g.metric_shift:+.2f}"
            lines.append(f"  {where}×{g.coefficient:g}: {g.text!r}" + (f"   logit shifts: {shifts}" if shifts else "")
                         + moved)
        return "\n".join(lines)


def steering_hook(vector: torch.Tensor, coefficient: float | torch.Tensor, positions: SteerPositions | Sequence[int],
                  prompt_len: int):
    """A forward hook adding coefficient × vector at the chosen absolute positions (see hook.ctx);
    coefficient: one number, or one per batch row [batch]."""
    def add(x: torch.Tensor, hook) -> torch.Tensor:
        coef = torch.as_tensor(coefficient, dtype=x.dtype, device=x.device)
        delta = (coef.view(-1, 1, 1) if coef.dim() else coef) * vector.to(x.dtype)  # [batch or 1, 1, d_model]
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


def steer(model, prompt: str, vector: torch.Tensor, layer: int | Sequence[int],
          coefficients: Sequence[float] = (0.0, 4.0, 8.0), hook: str = "resid_post",
          positions: SteerPositions | Sequence[int] = "all", max_new_tokens: int = 20, seed: int = 0,
          do_sample: bool = False, temperature: float = 1.0, tokens: Sequence[str | int] = (),
          answer: str | int | None = None, baseline: str | int | None = None) -> SteeringResult:
    """Generate from `prompt` with coefficient × vector added at `hook` of `layer` (or of each of several
    layers), for every coefficient, all in one batched generation.

    positions: "all", "prompt" (the prompt's positions only), "generated", or a list of absolute
    positions. Greedy by default (each row generates what it would alone); with do_sample the rows draw
    from one seeded generator. `tokens`: report how much each one's logit at the prompt's last position
    moves from the unsteered run; `answer` (and `baseline`): how much logit(answer) − logit(baseline)
    moves there (the answer's logit alone without a baseline). A lens.data.PromptSet as `prompt`: no
    generation, but the shift of each row's logit(answer) - logit(baseline) at its END per setting, mean
    and spread (steer_set)."""
    from lens.data.prompt_set import PromptSet
    if isinstance(prompt, PromptSet):
        return steer_set(model, prompt, vector, layer, coefficients, hook, positions)
    layers = [layer] if isinstance(layer, int) else list(layer)
    if not layers:
        raise ValueError("give a layer, or a list of layers")
    layers = [in_range(l, model.cfg.n_layers, "layer", f"a model of {model.cfg.n_layers} layers") for l in layers]
    names = {l: act_name(hook, l) for l in layers}
    for name in names.values():
        model._hooks.resolve(name)
    vector = torch.as_tensor(vector, device=model.device).detach()
    if vector.shape != (model.cfg.d_model,):
        raise ValueError(f"the steering vector must have shape [d_model] = [{model.cfg.d_model}], "
                         f"not {list(vector.shape)}")
    if positions not in ("all", "prompt", "generated") and isinstance(positions, str):
        raise ValueError(f"positions must be 'all', 'prompt', 'generated' or a list of positions, not {positions!r}")
    ids = prompt_tokens(model, prompt)
    settings = [(l, float(c)) for l in layers for c in coefficients]

    def make_hooks(settings):  # one hook per layer; a row adds its coefficient only at its own layer
        return [(name, steering_hook(vector, torch.tensor([0.0] + [c if sl == l else 0.0 for sl, c in settings],
                                                          device=model.device), positions, ids.shape[1]))
                for l, name in names.items()]
    prompt_untouched = positions == "generated" or (
        not isinstance(positions, str) and all(int(p) >= ids.shape[1] for p in positions))
    return steer_with_hooks(model, ids, make_hooks, settings, names[layers[0]],
                            positions if isinstance(positions, str) else str(list(positions)), float(vector.norm()),
                            prompt, max_new_tokens, seed, do_sample, temperature, tokens, answer, baseline,
                            prompt_untouched)


@torch.no_grad()
def steer_with_hooks(model, ids: torch.Tensor, make_hooks, settings: Sequence[tuple[int | None, float]], hook: str,
                     positions: str, vector_norm: float, prompt=None, max_new_tokens: int = 20, seed: int = 0,
                     do_sample: bool = False, temperature: float = 1.0, tokens: Sequence[str | int] = (),
                     answer: str | int | None = None, baseline: str | int | None = None,
                     prompt_untouched: bool = False) -> SteeringResult:
    """What steer() does with any hooks, every setting in one batched generation: row 0 runs unsteered (the
    reference for the logit shifts) and row 1 + k carries settings[k] = (layer or None, coefficient).
    `make_hooks(settings)` gives the forward hooks of that batch (e.g. clamping a dictionary feature,
    lens/sae/steering.py). `prompt_untouched`: the hooks leave the prompt's positions alone, so the shifts
    there are 0 exactly."""
    token_ids = [token_id(model, t) for t in tokens]
    if baseline is not None and answer is None:
        raise ValueError("a baseline is compared with an answer: give answer too")
    answer_id = None if answer is None else token_id(model, answer)
    baseline_id = None if baseline is None else token_id(model, baseline)
    batch = ids.expand(len(settings) + 1, -1)
    prompt_end = {}

    def keep(resid, point):  # the generation's first step runs the prompt: keep its last position
        if point.ctx.offset == 0:
            prompt_end["resid"] = resid[:, -1:]
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with model.hooks([*make_hooks(settings), (final, keep)]):
        out = model.generate(batch, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                             seed=seed, verbose=False)
        # [1 + settings, d_vocab] at the prompt's last position (no generation ran: one forward for it)
        logits = model.final_logits(prompt_end["resid"])[:, -1] if prompt_end else model(batch)[:, -1]
    generations = []
    for k, (layer, coefficient) in enumerate(settings, start=1):
        new = out[k, ids.shape[1]:]
        text = model.to_string(new) if model.tokenizer is not None else str(new.tolist())
        # A row whose prompt the steering leaves alone has the unsteered logits there: its shift is 0 exactly,
        # not the last-bit difference between two rows of one batched matmul.
        same = prompt_untouched or (coefficient == 0.0 and layer is not None)
        moved = logits[k] - logits[0]
        shifts = {token_str(model, t): 0.0 if same else float(moved[t]) for t in token_ids}
        metric_shift = None if answer_id is None else 0.0 if same else \
            float(moved[answer_id] - (0 if baseline_id is None else moved[baseline_id]))
        generations.append(SteeredGeneration(coefficient=coefficient, layer=layer, text=text, logit_shifts=shifts,
                                             metric_shift=metric_shift))
    return SteeringResult(prompt=prompt_text(model, ids if prompt is None else prompt, ids), hook=hook,
                          positions=positions, vector_norm=vector_norm, generations=generations)


class SetSteering(Result):
    hook: str
    n_rows: int
    metric: str
    settings: list[tuple[int, float]]  # (layer, coefficient)
    shifts: list  # one Spread per setting: steered - unsteered metric at each row's END

    def summary(self) -> str:
        lines = [f"steering {self.hook} over {self.n_rows} prompts: shift of {self.metric} at each row's END"]
        lines += [f"  L{layer} ×{coefficient:g}: {shift.text()}"
                  for (layer, coefficient), shift in zip(self.settings, self.shifts, strict=True)]
        return "\n".join(lines)


@torch.no_grad()
def steer_set(model, ps, vector: torch.Tensor, layer: int | Sequence[int], coefficients: Sequence[float] = (0.0, 4.0, 8.0),
              hook: str = "resid_post", positions: SteerPositions = "all") -> SetSteering:
    """How coefficient × vector at `hook` of each layer moves each row's logit(answer) - logit(baseline) (or
    its answer logit) at END: one forward of rows × (1 + settings), the first copy unsteered."""
    from lens.data.metrics import row_metric
    from lens.data.stats import spread
    layers = [layer] if isinstance(layer, int) else list(layer)
    layers = [in_range(l, model.cfg.n_layers, "layer", f"a model of {model.cfg.n_layers} layers") for l in layers]
    vector = torch.as_tensor(vector, device=model.device).detach()
    if vector.shape != (model.cfg.d_model,):
        raise ValueError(f"the steering vector must have shape [d_model] = [{model.cfg.d_model}], "
                         f"not {list(vector.shape)}")
    if positions not in ("all", "prompt", "generated"):
        raise ValueError(f"over a prompt set, positions are 'all', 'prompt' or 'generated', not {positions!r}")
    settings = [(l, float(c)) for l in layers for c in coefficients]
    n = len(ps)
    metric = row_metric(ps[[i for _ in range(len(settings) + 1) for i in range(n)]])
    hooks = []
    for l in layers:
        name = act_name(hook, l)
        model._hooks.resolve(name)
        per_copy = [0.0] + [c if sl == l else 0.0 for sl, c in settings]
        coef = torch.tensor(per_copy, device=model.device).repeat_interleave(n)  # [copies * n_rows]
        hooks.append((name, steering_hook(vector, coef, positions, ps.n_pos)))
    with model.hooks(hooks):
        values = metric.rows(model(ps.clean_tokens.to(model.device).repeat(len(settings) + 1, 1)))
    values = values.view(len(settings) + 1, n).double().cpu()
    return SetSteering(hook=act_name(hook, layers[0]), n_rows=n, metric=metric.name, settings=settings,
                       shifts=[spread(values[k] - values[0]) for k in range(1, len(settings) + 1)])
