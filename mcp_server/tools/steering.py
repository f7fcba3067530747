"""steer: build a steering vector from contrast prompts (or reuse a stored one) and generate with it."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens.analysis import steer as lens_steer
from lens.analysis import steering_vector
from mcp_server import checks
from mcp_server.schemas import ModelRef, Num, Part, Prompt, Token, ToolResult
from mcp_server.sets import DatasetRef, Rows, SetInfo, TokenRows, figure, prompt_set, rows_said, set_info
from mcp_server.state import state_of
from mcp_server.tools.annotations import STORING

ContrastPrompts = Annotated[list[Prompt] | None, Field(min_length=1, max_length=64)]
Coefficient = Annotated[float, Field(ge=-1000, le=1000)]


class LogitShift(Part):
    token: str
    shift: Num = Field(description="steered minus unsteered logit at the prompt's last position")


class SteeredText(Part):
    coefficient: Num
    text: str = Field(description="the continuation only")
    logit_shifts: list[LogitShift]
    metric_shift: Num | None = Field(None, description="with answer: the shift of logit(answer) - logit(baseline)")


class Steering(ToolResult):
    vector: str = Field(description="handle of the steering vector (reuse it with vector=...)")
    hook: str
    vector_norm: Num
    positions: str
    generations: list[SteeredText]
    shifts: list[list[Num]] | None = Field(None, description="over a set (no generation): per coefficient, "
                                                             "[mean, 95% half-width, rows agreeing] of the shift")
    set: SetInfo | None = None


def steer(
    ctx: Context,
    prompt: Rows,
    positive: ContrastPrompts = None,
    negative: ContrastPrompts = None,
    vector: Annotated[str | None, Field(max_length=100, description="a stored vector's handle")] = None,
    layer: Annotated[int | None, Field(ge=-1000, le=1000, description="default: the vector's, else the middle")] = None,
    hook: Annotated[Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"] | None, Field(
        description="default: the vector's, else resid_post")] = None,
    position: Annotated[Literal["mean", "last"], Field(description="of each contrast prompt")] = "mean",
    coefficients: Annotated[list[Coefficient], Field(min_length=1, max_length=8)] = (0.0, 4.0, 8.0),
    positions: Annotated[Literal["all", "prompt", "generated"], Field(description="where the vector is added")] = "all",
    max_new_tokens: Annotated[int, Field(ge=1, le=128)] = 20,
    do_sample: bool = False,
    temperature: Annotated[float, Field(gt=0, le=10)] = 1.0,
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0,
    tokens: Annotated[list[Token], Field(max_length=10, description="report these tokens' logit shifts")] = (),
    answer: Annotated[TokenRows | None, Field(description="report logit(answer) - logit(baseline)'s shift")] = None,
    baseline: TokenRows | None = None,
    dataset: DatasetRef = None,
    model: ModelRef = None,
) -> Steering:
    """Steering: generate with coefficient x vector added at one layer (0 = unsteered); per
    coefficient the text and logit shifts. Vector: mean activation of positive minus negative
    prompts, stored for reuse."""
    state = state_of(ctx)
    with state.using(model) as entry:
        m = entry.model
        if vector is not None:
            if positive or negative:
                raise ToolError("give either a stored vector or positive and negative prompts, not both")
            stored = state.vector(vector, entry.handle)
            layer = stored.layer if layer is None else checks.layer(m, layer)
            hook = hook or stored.hook
        elif positive and negative:
            layer = m.cfg.n_layers // 2 if layer is None else checks.layer(m, layer)
            hook = hook or "resid_post"
            stored = state.store_vector(entry.handle, layer, hook,
                                        steering_vector(m, positive, negative, layer, hook=hook, position=position))
        else:
            raise ToolError("steer needs positive and negative prompts (to build a vector) or vector=<handle>")
        ps = prompt_set(state, entry, dataset, prompt, None, answer, baseline, needs_corrupted=False) \
            if dataset is not None or isinstance(prompt, list) else None
        if ps is not None:
            moved = lens_steer(m, ps, stored.vector, layer, coefficients=coefficients, hook=hook, positions=positions)
            said = "; ".join(f"x{c:g}: {figure(s.mean, s)}" for (_, c), s in zip(moved.settings, moved.shifts,
                                                                                   strict=True))
            return Steering(model=entry.handle, vector=stored.handle, hook=moved.hook,
                            vector_norm=float(stored.vector.norm()), positions=positions, generations=[],
                            shifts=[[s.mean, (s.ci95[1] - s.ci95[0]) / 2, s.agreement] for s in moved.shifts],
                            set=set_info(ps), interpretation=f"shift of {moved.metric} at each row's END: {said}"
                                                             f"{rows_said(ps)}")
        result = lens_steer(m, prompt, stored.vector, layer, coefficients=coefficients, hook=hook, positions=positions,
                            max_new_tokens=max_new_tokens, seed=seed, do_sample=do_sample, temperature=temperature,
                            tokens=tokens, answer=answer, baseline=baseline)
    generations = [SteeredText(coefficient=g.coefficient, text=g.text, metric_shift=g.metric_shift,
                               logit_shifts=[LogitShift(token=t, shift=s) for t, s in g.logit_shifts.items()])
                   for g in result.generations]
    metric = None if answer is None else f"logit({answer!r})" + ("" if baseline is None else f" - logit({baseline!r})")

    def said(g: SteeredText) -> str:
        moved = "" if g.metric_shift is None else f" ({metric} {g.metric_shift:+.2f})"
        shifts = ", ".join(f"{s.token!r} {s.shift:+.2f}" for s in g.logit_shifts)
        return f"x{g.coefficient:g}: {g.text[:40]!r}{moved}" + (f" [{shifts}]" if shifts else "")
    return Steering(model=entry.handle, vector=stored.handle, hook=result.hook, vector_norm=result.vector_norm,
                    positions=result.positions, generations=generations,
                    interpretation=(f"{result.hook}, |vector| {result.vector_norm:.2f}; "
                                    + "; ".join(said(g) for g in generations)))


TOOLS = [(steer, STORING)]
