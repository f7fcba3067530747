"""Causal interventions: activation patching, attribution patching, path patching, ablation.

Each scores a metric built from answer/baseline tokens: logit(answer) - logit(baseline) at the
last position (the answer's logit alone without a baseline), or the answer's probability.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens import patching
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
    Positions,
    Prompt,
    Token,
    ToolResult,
    TopK,
)
from mcp_server.state import state_of
from mcp_server.tools.annotations import PLOTTING

Target = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos",
                 "q", "k", "v", "pattern", "q_by_pos", "k_by_pos", "v_by_pos", "pattern_by_pos"]
Corrupted = Annotated[str, Field(min_length=1, max_length=50_000, description=(
    "the prompt with the key information changed; same token count as clean"))]
MetricKind = Annotated[Literal["logit_diff", "probability"], Field(
    description="logit_diff: logit(answer) - logit(baseline) (the answer's logit without a baseline); "
                "probability: p(answer)")]
Baseline = Annotated[Token | None, Field(description="the token the answer competes with (e.g. the other name)")]
ComponentName = Annotated[str, Field(min_length=1, max_length=40, description=(
    "'L9H6' (head), 'L9H6.q' (its query; .k .v .qkv), 'L3.mlp', 'L3.attn', 'L3N1031' (neuron), 'logits'"))]


class Hotspot(Part):
    label: str = Field(description="e.g. 'L9H6', \"L4 @13 ' to'\" (layer 4, position 13)")
    index: list[int] = Field(description="coordinates along `axes`")
    score: Num = Field(description="the metric with this intervention")
    effect: Num = Field(description="score minus the baseline run's metric")
    normalised: Num | None = Field(None, description="0 = corrupted run, 1 = clean run (patching only)")


class InterventionSummary(ToolResult):
    method: str
    what: str
    metric: str
    axes: list[str]
    shape: list[int] = Field(description="how many were swept along each axis")
    hotspots: list[Hotspot] = Field(description="the largest effects, largest |effect| first")
    plot: Plot | None


class PatchSummary(InterventionSummary):
    clean_value: Num = Field(description="the metric on the clean prompt")
    corrupted_value: Num = Field(description="the metric on the corrupted prompt (the run that is patched)")


class AblationSummary(InterventionSummary):
    unablated_value: Num = Field(description="the metric with nothing ablated")


def _metric(model, metric: str, answer: str, baseline: str | None):
    if metric == "probability":
        if baseline is not None:
            raise ToolError("metric='probability' scores the answer alone; leave baseline out or use logit_diff")
        return patching.probability(model, answer)
    return patching.logit_diff(model, answer, baseline)


def _pair(model, clean: str, corrupted: str) -> int:
    """The shared token count of a clean/corrupted pair, or a ToolError showing both splits."""
    clean_tokens, corrupted_tokens = model.to_str_tokens(clean), model.to_str_tokens(corrupted)
    if len(clean_tokens) != len(corrupted_tokens):
        raise ToolError(f"the clean prompt is {len(clean_tokens)} tokens and the corrupted one {len(corrupted_tokens)}; "
                        f"patching pairs them position by position, so they need the same length. clean: "
                        f"{clean_tokens[:80]}; corrupted: {corrupted_tokens[:80]}. Change words that split differently.")
    return checks.context(model, len(clean_tokens))


def _hotspots(result: GridResult) -> list[Hotspot]:
    return [Hotspot(label=h.label, index=h.index, score=h.score, effect=h.effect, normalised=h.normalised)
            for h in result.top]


def _where(result: GridResult, index: list[int]) -> str:
    """'layer 12, position 10 (' Mary')' for a hotspot's coordinates."""
    parts = []
    for axis, value in zip(result.axes, index, strict=True):
        if axis == "pos":
            parts.append(f"position {value} ({result.str_tokens[value]!r})")
        elif axis == "component":
            parts.append(result.names[value])
        else:
            parts.append(f"{axis.replace('_', ' ')} {value}")
    return ", ".join(parts)


def _patch_summary(entry, result, drawn: Plot | None) -> PatchSummary:
    top = result.top[0]
    where = f"{result.what} at {_where(result, top.index)}"
    if result.method.startswith("path patching"):  # what: "senders → receivers"; senders named as components
        senders, receivers = result.what.split(" → ")
        sender = f"{top.label}.mlp" if senders == "mlps" else top.label if result.axes else senders
        where = f"the path from {sender} to {receivers}"
    if top.normalised is not None and math.isfinite(top.normalised):
        said = f"{where} restores {round(100 * top.normalised) or 0}% of the clean {result.metric}"
    else:
        said = f"{where} changes {result.metric} by {top.effect:+.3f} (clean and corrupted score alike)"
    return PatchSummary(
        model=entry.handle, method=result.method, what=result.what, metric=result.metric, axes=result.axes,
        shape=[len(c) for c in result.coords], hotspots=_hotspots(result), plot=drawn,
        clean_value=result.clean_value, corrupted_value=result.corrupted_value,
        interpretation=f"{said} (clean {result.clean_value:+.3f}, corrupted {result.corrupted_value:+.3f})")


def _sweep_size(model, what: str, n_pos: int, layers, positions) -> int:
    """How many patches a patch() sweep runs (for progress)."""
    axes = patching.TARGETS[what].axes if what in patching.TARGETS else ()
    count = model.cfg.n_layers if layers is None else len(layers)
    for axis in axes:
        count *= (n_pos if positions is None else len(positions)) if axis == "pos" else model.cfg.n_heads
    return count


def patch(
    ctx: Context,
    clean: Prompt,
    corrupted: Corrupted,
    answer: Token,
    baseline: Baseline = None,
    what: Target = "resid_pre",
    layers: Layers = None,
    positions: Positions = None,
    metric: MetricKind = "logit_diff",
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> PatchSummary:
    """Activation patching: run the corrupted prompt with one activation at a time taken from the
    clean run, and report how much of the clean metric each patch restores (normalised: 0 =
    corrupted, 1 = clean). `what`: resid_pre / resid_mid / resid_post / attn_out / mlp_out sweep
    layer x position; heads (each head's output, all positions) layer x head; heads_by_pos, q / k /
    v / pattern (and their _by_pos forms) per head. Use it for causal evidence of where the
    information that separates the prompts lives (IOI: clean '... John gave a drink to', answer
    ' Mary', baseline ' John'; corrupted with the names swapped). Reports progress on long sweeps.
    Plot: layer x position or layer x head heatmap of the normalised metric."""
    state = state_of(ctx)
    target = state.plots.target(plot, f"patch-{what}", plot_path)
    with state.using(model) as entry:
        m = entry.model
        n_pos = _pair(m, clean, corrupted)
        layers, positions = checks.layers(m, layers), checks.positions(n_pos, positions)
        with forward_progress(ctx, m, _sweep_size(m, what, n_pos, layers, positions) + 2, f"patching {what}"):
            result = patching.patch(m, clean, corrupted, _metric(m, metric, answer, baseline), what=what,
                                    positions=positions, layers=layers, top_k=top_k, progress=False)
    return _patch_summary(entry, result, state.plots.draw(result.plot, target))


def attribution_patch(
    ctx: Context,
    clean: Prompt,
    corrupted: Corrupted,
    answer: Token,
    baseline: Baseline = None,
    what: Target = "resid_pre",
    layers: Layers = None,
    positions: Positions = None,
    metric: MetricKind = "logit_diff",
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> PatchSummary:
    """Attribution patching: the gradient (first-order) estimate of `patch`, for every layer,
    position and head at once from two forwards and one backward. Same arguments and result as
    patch. Use it to survey a large sweep cheaply, then confirm the hotspots with patch; it is
    least accurate where the metric saturates (e.g. whole residual streams)."""
    state = state_of(ctx)
    target = state.plots.target(plot, f"attribution-patch-{what}", plot_path)
    with state.using(model) as entry:
        m = entry.model
        n_pos = _pair(m, clean, corrupted)
        result = patching.attribution_patch(m, clean, corrupted, _metric(m, metric, answer, baseline), what=what,
                                            positions=checks.positions(n_pos, positions),
                                            layers=checks.layers(m, layers), top_k=top_k)
    return _patch_summary(entry, result, state.plots.draw(result.plot, target))


def path_patch(
    ctx: Context,
    clean: Prompt,
    corrupted: Corrupted,
    answer: Token,
    receivers: Annotated[list[ComponentName], Field(min_length=1, max_length=32, description=(
        "where the paths end: heads' inputs ('L9H6.q', 'L9H6.qkv'), MLPs ('L9.mlp'), or ['logits'] alone"))],
    baseline: Baseline = None,
    senders: Annotated[Literal["heads", "mlps"] | list[ComponentName], Field(description=(
        "'heads' (every head: layer x head), 'mlps' (every MLP), or a list of components"))] = "heads",
    together: Annotated[bool, Field(description="patch the listed senders all at once")] = False,
    positions: Positions = None,
    freeze_mlps: Annotated[bool, Field(description="hold MLPs at their corrupted output (direct paths only)")] = False,
    metric: MetricKind = "logit_diff",
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> PatchSummary:
    """Path patching: the effect of each sender (clean value) on the metric through the receivers
    only, with every other head frozen at its corrupted value (Wang et al. 2022, IOI). Use it
    once patch has found important heads, to ask which earlier heads act on them, e.g. senders
    'heads' into receivers ['L9H6.q', 'L9H9.q'] for the S-inhibition heads of IOI."""
    state = state_of(ctx)
    target = state.plots.target(plot, "path-patch", plot_path)
    with state.using(model) as entry:
        m = entry.model
        n_pos = _pair(m, clean, corrupted)
        n_senders = m.cfg.n_layers * m.cfg.n_heads if senders == "heads" else \
            m.cfg.n_layers if senders == "mlps" else len(senders)
        with forward_progress(ctx, m, 2 * n_senders + 3, "path patching"):
            result = patching.path_patch(
                m, clean, corrupted, _metric(m, metric, answer, baseline), receivers, senders, together=together,
                positions=checks.positions(n_pos, positions), freeze_mlps=freeze_mlps, top_k=top_k, progress=False)
    drawn = state.plots.draw(result.plot, target) if result.axes else None
    return _patch_summary(entry, result, drawn)


def ablate(
    ctx: Context,
    prompt: Prompt,
    answer: Token,
    baseline: Baseline = None,
    what: Annotated[Literal["heads", "neurons", "mlp", "attn"], Field(
        description="sweep every head / neuron / MLP layer / attention layer (ignored with components)")] = "heads",
    method: Annotated[Literal["zero", "mean", "resample"], Field(
        description="replace with zero, the mean over `reference`, or a `reference` prompt's value")] = "zero",
    components: Annotated[list[ComponentName] | None, Field(max_length=256, description=(
        "ablate just these ('L9H6', 'L3.mlp', 'L3.attn', 'L3N1031'), one at a time or together"))] = None,
    together: Annotated[bool, Field(description="ablate the listed components all at once")] = False,
    reference: Annotated[list[Prompt] | None, Field(min_length=1, max_length=64, description=(
        "prompts for mean / resample ablation; same token count as the prompt unless mean_over is batch_and_pos"))] = None,
    mean_over: Literal["batch", "batch_and_pos"] = "batch",
    positions: Positions = None,
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0,
    metric: MetricKind = "logit_diff",
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> AblationSummary:
    """Ablation: knock out components (zero, mean or resample) one at a time, or a set together,
    and report how the metric changes. Use it to test whether components found by patch or
    logit_attribution are necessary (e.g. ablate the name-mover heads and see the logit
    difference fall). A neuron sweep of a whole model is long; it reports progress."""
    state = state_of(ctx)
    target = state.plots.target(plot, f"ablate-{what}", plot_path)
    with state.using(model) as entry:
        m = entry.model
        n_pos = checks.context(m, len(m.to_str_tokens(prompt)))
        cfg = m.cfg
        n = len(components) if components else cfg.n_layers * {"heads": cfg.n_heads, "neurons": cfg.d_mlp}.get(what, 1)
        with forward_progress(ctx, m, n + 1 + (reference is not None), f"{method} ablation"):
            result = patching.ablate(m, prompt, _metric(m, metric, answer, baseline), what=what, method=method,
                                     components=components, positions=checks.positions(n_pos, positions),
                                     reference=reference, mean_over=mean_over, together=together, seed=seed,
                                     top_k=top_k, progress=False)
    drawn = state.plots.draw(result.plot, target) if result.axes else None
    top = result.top[0]
    return AblationSummary(
        model=entry.handle, method=result.method, what=result.what, metric=result.metric, axes=result.axes,
        shape=[len(c) for c in result.coords], hotspots=_hotspots(result), plot=drawn, unablated_value=result.baseline,
        interpretation=(f"{method}-ablating {top.label if result.axes else result.what} changes {result.metric} by "
                        f"{top.effect:+.3f} (from {result.baseline:+.3f} to {top.score:+.3f})"))


TOOLS = [(patch, PLOTTING), (attribution_patch, PLOTTING), (path_patch, PLOTTING), (ablate, PLOTTING)]
