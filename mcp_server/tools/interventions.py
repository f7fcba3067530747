"""Causal interventions: activation patching, attribution patching, path patching, ablation.

Each scores a metric built from answer/baseline tokens: logit(answer) - logit(baseline) at the
last position (the answer's logit alone without a baseline), or the answer's probability.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, NamedTuple

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens import patching
from lens.analysis.common import spacing_warnings
from lens.data import PromptSet
from lens.patching.result import GridResult
from mcp_server import checks
from mcp_server.plots import DrawPlot, PlotPath
from mcp_server.progress import forward_progress
from mcp_server.schemas import (
    Layers,
    ModelRef,
    Num,
    Part,
    Plot,
    Prompt,
    ToolResult,
    TopK,
    warned,
)
from mcp_server.sets import (
    DatasetRef,
    Rows,
    SetInfo,
    SetPositions,
    Span,
    SpreadPart,
    TokenRows,
    figure,
    prompt_set,
    rows_said,
    set_info,
    spread_part,
)
from mcp_server.state import state_of
from mcp_server.tools.annotations import PLOTTING

Target = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos",
                 "q", "k", "v", "pattern", "q_by_pos", "k_by_pos", "v_by_pos", "pattern_by_pos"]
# described once in the server's instructions
MetricKind = Literal["logit_diff", "probability", "loss"]
ComponentName = Annotated[str, Field(min_length=1, max_length=40)]  # 'L9H6', 'L9H6.q', 'L3.mlp', 'L3N1031', ...
SET_KINDS = {"logit_diff": "logit_diff", "probability": "prob"}  # metric → lens.data.row_metric kind


class Hotspot(Part):
    label: str = Field(description="'L9H6', \"L4 @13 ' to'\"; \"' John'/' Mary'\" where clean/corrupted differ")
    index: list[int] = Field(description="coordinates along `axes`")
    score: Num = Field(description="the metric with this intervention (mean over rows)")
    effect: Num = Field(description="score minus the baseline run's metric")
    normalised: Num | None = Field(None, description="0 = corrupted run, 1 = clean run (patching only)")
    spread: SpreadPart | None = Field(None, description="over a set: of `normalised` (else `effect`) per row")


class InterventionSummary(ToolResult):
    method: str
    what: str
    metric: str
    axes: list[str]
    shape: list[int] = Field(description="how many were swept along each axis")
    hotspots: list[Hotspot] = Field(description="the largest effects, largest |effect| first")
    best_pos: list[int] | None = Field(description="layer x position sweeps: per swept layer, the position that "
                                                   "restores most (ablation: changes most)")
    set: SetInfo | None = Field(description="over a set: rows used and dropped")
    warnings: list[str] | None
    plot: Plot | None


class PatchSummary(InterventionSummary):
    clean_value: Num = Field(description="the metric on the clean prompt")
    corrupted_value: Num = Field(description="the metric on the corrupted prompt (the run that is patched)")


class AblationSummary(InterventionSummary):
    unablated_value: Num = Field(description="the metric with nothing ablated")


def _metric(model, metric: str, answer, baseline, prompt, span: list[int] | None, ps):
    """The metric a call asks for: a lens metric for one prompt, a row-metric kind over a set."""
    if metric == "loss":
        if ps is not None:
            raise ToolError("metric='loss' scores one prompt's own next tokens; over a set use logit_diff (the "
                            "induction dataset's answer is each row's next token)")
        if answer is not None or baseline is not None:
            raise ToolError("metric='loss' scores the prompt's own next tokens; leave answer and baseline out")
        n_pos = len(model.to_str_tokens(prompt))
        first, last = (0, n_pos - 2) if span is None else (checks.position(n_pos, i) for i in span)
        if first > last:
            raise ToolError(f"span {span} is empty: give [first, last] with first <= last")
        return patching.next_token_loss(model, prompt, list(range(first, last + 1)))
    if ps is not None:
        if metric == "logit_diff" and ps.baseline_ids is None:
            return "logit"
        if metric == "probability" and ps.baseline_ids is not None:
            raise ToolError("metric='probability' scores the answer alone; leave baseline out or use logit_diff")
        return SET_KINDS[metric]
    if answer is None:
        raise ToolError(f"metric={metric!r} scores an answer token: give answer (e.g. ' Mary'), or metric='loss'")
    if metric == "probability":
        if baseline is not None:
            raise ToolError("metric='probability' scores the answer alone; leave baseline out or use logit_diff")
        return patching.probability(model, answer)
    return patching.logit_diff(model, answer, baseline)


def _pair(model, clean: str, corrupted: str | None) -> int:
    """The shared token count of a clean/corrupted pair, or a ToolError showing both splits."""
    if corrupted is None:
        raise ToolError("give the corrupted prompt (clean with the key information changed), or dataset=<handle>")
    clean_tokens, corrupted_tokens = model.to_str_tokens(clean), model.to_str_tokens(corrupted)
    if len(clean_tokens) != len(corrupted_tokens):
        raise ToolError(f"the clean prompt is {len(clean_tokens)} tokens and the corrupted one {len(corrupted_tokens)}; "
                        f"patching pairs them position by position, so they need the same length. clean: "
                        f"{clean_tokens[:80]}; corrupted: {corrupted_tokens[:80]}. Change words that split differently.")
    if clean_tokens == corrupted_tokens:
        raise ToolError("the clean and corrupted prompts are identical, so there is nothing to patch; change the "
                        "key information in the corrupted one (e.g. swap the names)")
    return checks.context(model, len(clean_tokens))


class Call(NamedTuple):
    """What a call runs on: one prompt (ps None, the checked positions) or a set (positions as given)."""

    subject: object  # the clean prompt, or the PromptSet
    corrupted: str | None
    ps: PromptSet | None
    positions: list | None
    metric: object
    warnings: list[str]


def _call(state, entry, dataset, clean, corrupted, answer, baseline, positions, metric, span,
          needs_corrupted: bool = True) -> Call:
    """Resolve a call's prompt arguments into one prompt or a set, its positions, metric and warnings."""
    m = entry.model
    ps = prompt_set(state, entry, dataset, clean, corrupted, answer, baseline, needs_corrupted)
    if ps is None:
        n_pos = _pair(m, clean, corrupted) if needs_corrupted else checks.context(m, len(m.to_str_tokens(clean)))
        if positions is not None and any(isinstance(p, str) for p in positions):
            raise ToolError(f"positions {positions}: names ('S2', 'END') are for sets (dataset=...); one prompt "
                            f"takes indices")
        return Call(clean, corrupted, None, checks.positions(n_pos, positions),
                    _metric(m, metric, answer, baseline, clean, span, None), spacing_warnings(m, clean, [answer, baseline]))
    first = ps.rows[0]
    return Call(ps, None, ps, positions, _metric(m, metric, None, None, None, span, ps),
                spacing_warnings(m, first.clean, [first.answer, first.baseline]))


def _hotspots(result: GridResult) -> list[Hotspot]:
    return [Hotspot(label=h.label, index=h.index, score=h.score, effect=h.effect, normalised=h.normalised,
                    spread=spread_part(h.spread)) for h in result.top]


def _where(result: GridResult, index: list[int]) -> str:
    """'layer 12, position 10 (' Mary')' for a hotspot's coordinates."""
    parts = []
    for axis, value in zip(result.axes, index, strict=True):
        if axis == "pos":
            parts.append(f"position {value} ({result.token_at(value)})")
        elif axis == "component":
            parts.append(result.names[value])
        else:
            parts.append(f"{axis.replace('_', ' ')} {value}")
    return ", ".join(parts)


def _flow(result: GridResult) -> str:
    """'; per layer the best position is 5 (' Tower') at L0-L14, 12 (' in') at L15-L29' for layer x position sweeps."""
    runs = result.position_runs()
    if not runs:
        return ""
    said = ", ".join(f"{p} ({result.token_at(p)}) at L{a}" + (f"-L{b}" if b != a else "") for a, b, p in runs[:6])
    return f"; per layer the best position is {said}" + (" ..." if len(runs) > 6 else "")


def _patch_summary(entry, result, drawn: Plot | None, call: Call) -> PatchSummary:
    top = result.top[0]
    where = f"{result.what} at {_where(result, top.index)}"
    if result.method.startswith("path patching"):  # what: "senders → receivers"; senders named as components
        senders, receivers = result.what.split(" → ")
        sender = f"{top.label}.mlp" if senders == "mlps" else top.label if result.axes else senders
        where = f"the path from {sender} to {receivers}"
    if top.normalised is not None and math.isfinite(top.normalised):
        said = f"{where} restores {figure(top.normalised, top.spread, percent=True)} of the clean {result.metric}"
    else:
        said = f"{where} changes {result.metric} by {figure(top.effect, top.spread)} (clean and corrupted score alike)"
    return PatchSummary(
        model=entry.handle, method=result.method, what=result.what, metric=result.metric, axes=result.axes,
        shape=[len(c) for c in result.coords], hotspots=_hotspots(result), best_pos=result.best_positions(),
        set=set_info(call.ps), warnings=call.warnings or None, plot=drawn, clean_value=result.clean_value,
        corrupted_value=result.corrupted_value,
        interpretation=warned(f"{said} (clean {result.clean_value:+.3f}, corrupted {result.corrupted_value:+.3f})"
                              f"{_flow(result)}{rows_said(call.ps)}", call.warnings))


def _sweep_size(model, what: str, n_pos: int, layers, positions, n_rows: int = 1) -> int:
    """How many rows of forwards a patch() sweep runs (for progress)."""
    axes = patching.TARGETS[what].axes if what in patching.TARGETS else ()
    count = model.cfg.n_layers if layers is None else len(layers)
    for axis in axes:
        count *= (n_pos if positions is None else len(positions)) if axis == "pos" else model.cfg.n_heads
    return (count + 2) * n_rows


def patch(
    ctx: Context,
    clean: Rows | None = None,
    corrupted: Rows | None = None,
    answer: TokenRows | None = None,
    baseline: TokenRows | None = None,
    dataset: DatasetRef = None,
    what: Target = "resid_pre",
    layers: Layers = None,
    positions: SetPositions = None,
    metric: MetricKind = "logit_diff",
    span: Span = None,
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> PatchSummary:
    """Activation patching: the corrupted run with one clean activation at a time; the share of the
    clean metric each restores. IOI: clean '...John gave a drink to', names swapped, answer ' Mary',
    baseline ' John'."""
    state = state_of(ctx)
    target = state.plots.target(plot, f"patch-{what}", plot_path)
    with state.using(model) as entry:
        m = entry.model
        call = _call(state, entry, dataset, clean, corrupted, answer, baseline, positions, metric, span)
        layers = checks.layers(m, layers)
        n_pos = call.ps.n_pos if call.ps is not None else len(m.to_str_tokens(clean))
        n_rows = 1 if call.ps is None else len(call.ps)
        with forward_progress(ctx, m, _sweep_size(m, what, n_pos, layers, call.positions, n_rows), f"patching {what}"):
            result = patching.patch(m, call.subject, call.corrupted, call.metric, what=what, positions=call.positions,
                                    layers=layers, top_k=top_k, progress=False)
    return _patch_summary(entry, result, state.plots.draw(result.plot, target), call)


def attribution_patch(
    ctx: Context,
    clean: Rows | None = None,
    corrupted: Rows | None = None,
    answer: TokenRows | None = None,
    baseline: TokenRows | None = None,
    dataset: DatasetRef = None,
    what: Target = "resid_pre",
    layers: Layers = None,
    positions: SetPositions = None,
    metric: MetricKind = "logit_diff",
    span: Span = None,
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> PatchSummary:
    """patch's gradient estimate, every layer/position/head from one backward: survey cheaply,
    confirm with patch (least accurate where the metric saturates). Same arguments and result."""
    state = state_of(ctx)
    target = state.plots.target(plot, f"attribution-patch-{what}", plot_path)
    with state.using(model) as entry:
        m = entry.model
        call = _call(state, entry, dataset, clean, corrupted, answer, baseline, positions, metric, span)
        result = patching.attribution_patch(m, call.subject, call.corrupted, call.metric, what=what,
                                            positions=call.positions, layers=checks.layers(m, layers), top_k=top_k)
    return _patch_summary(entry, result, state.plots.draw(result.plot, target), call)


def path_patch(
    ctx: Context,
    receivers: Annotated[list[ComponentName], Field(min_length=1, max_length=32, description=(
        "head inputs ('L9H6.q'), MLPs ('L9.mlp') or ['logits']"))],
    clean: Rows | None = None,
    corrupted: Rows | None = None,
    answer: TokenRows | None = None,
    baseline: TokenRows | None = None,
    dataset: DatasetRef = None,
    senders: Annotated[Literal["heads", "mlps"] | list[ComponentName], Field(description=(
        "'heads', 'mlps' (each) or a list"))] = "heads",
    together: Annotated[bool, Field(description="the listed senders at once")] = False,
    positions: SetPositions = None,
    freeze_mlps: Annotated[bool, Field(description="direct paths only")] = False,
    metric: MetricKind = "logit_diff",
    span: Span = None,
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> PatchSummary:
    """Path patching (Wang et al. 2022): each sender's clean effect through the receivers only,
    other heads frozen. Which heads drive a head patch found: receivers ['L9H6.q']."""
    state = state_of(ctx)
    target = state.plots.target(plot, "path-patch", plot_path)
    with state.using(model) as entry:
        m = entry.model
        call = _call(state, entry, dataset, clean, corrupted, answer, baseline, positions, metric, span)
        n_senders = m.cfg.n_layers * m.cfg.n_heads if senders == "heads" else \
            m.cfg.n_layers if senders == "mlps" else len(senders)
        n_rows = 1 if call.ps is None else len(call.ps)
        with forward_progress(ctx, m, (2 * n_senders + 3) * n_rows, "path patching"):
            result = patching.path_patch(m, call.subject, call.corrupted, call.metric, receivers, senders,
                                         together=together, positions=call.positions, freeze_mlps=freeze_mlps,
                                         top_k=top_k, progress=False)
    drawn = state.plots.draw(result.plot, target) if result.axes else None
    return _patch_summary(entry, result, drawn, call)


def ablate(
    ctx: Context,
    prompt: Rows | None = None,
    answer: TokenRows | None = None,
    baseline: TokenRows | None = None,
    dataset: DatasetRef = None,
    what: Annotated[Literal["heads", "neurons", "mlp", "attn"], Field(description="what to sweep")] = "heads",
    method: Annotated[Literal["zero", "mean", "resample"], Field(description="mean/resample use reference")] = "zero",
    components: Annotated[list[ComponentName] | None, Field(max_length=256, description=(
        "instead of a sweep: ['L9H6', 'L3.mlp', 'L3N1031']"))] = None,
    together: Annotated[bool, Field(description="the listed components at once")] = False,
    reference: Annotated[list[Prompt] | None, Field(min_length=1, max_length=64)] = None,
    mean_over: Literal["batch", "batch_and_pos"] = "batch",
    positions: SetPositions = None,
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0,
    metric: MetricKind = "logit_diff",
    span: Span = None,
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> AblationSummary:
    """Ablation: knock out components one at a time or together; the metric's change. Tests
    necessity (induction heads: metric loss, span over a repeated text's second copy)."""
    state = state_of(ctx)
    target = state.plots.target(plot, f"ablate-{what}", plot_path)
    with state.using(model) as entry:
        m = entry.model
        call = _call(state, entry, dataset, prompt, None, answer, baseline, positions, metric, span,
                     needs_corrupted=False)
        cfg = m.cfg
        n = len(components) if components else cfg.n_layers * {"heads": cfg.n_heads, "neurons": cfg.d_mlp}.get(what, 1)
        n_rows = 1 if call.ps is None else len(call.ps)
        with forward_progress(ctx, m, (n + 1 + (reference is not None)) * n_rows, f"{method} ablation"):
            result = patching.ablate(m, call.subject, call.metric, what=what, method=method, components=components,
                                     positions=call.positions, reference=reference, mean_over=mean_over,
                                     together=together, seed=seed, top_k=top_k, progress=False)
    drawn = state.plots.draw(result.plot, target) if result.axes else None
    top = result.top[0]
    return AblationSummary(
        model=entry.handle, method=result.method, what=result.what, metric=result.metric, axes=result.axes,
        shape=[len(c) for c in result.coords], hotspots=_hotspots(result), best_pos=result.best_positions(),
        set=set_info(call.ps), warnings=call.warnings or None, plot=drawn, unablated_value=result.baseline,
        interpretation=warned(f"{method}-ablating {top.label if result.axes else result.what} changes "
                              f"{result.metric} by {figure(top.effect, top.spread)} (from {result.baseline:+.3f} "
                              f"to {top.score:+.3f}){rows_said(call.ps)}", call.warnings))


TOOLS = [(patch, PLOTTING), (attribution_patch, PLOTTING), (path_patch, PLOTTING), (ablate, PLOTTING)]
