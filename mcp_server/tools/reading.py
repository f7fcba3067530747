"""Reading one prompt: direct logit attribution, the logit lens, and attention patterns."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens import plots
from lens.analysis import attention_patterns, direct_logit_attribution
from lens.analysis import logit_lens as lens_logit_lens
from lens.analysis.common import spacing_warnings
from mcp_server import checks
from mcp_server.plots import DrawPlot, PlotPath
from mcp_server.schemas import (
    Detail,
    HeadLabel,
    ModelRef,
    Num,
    Part,
    Plot,
    Position,
    Prompt,
    Token,
    TokenWindow,
    ToolResult,
    TopK,
    head_label,
    token_window,
    warned,
)
from mcp_server.sets import (
    DatasetRef,
    Rows,
    SetInfo,
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


class Contribution(Part):
    component: str = Field(description="'L9H6' (head), 'L9 attn' / 'L9 mlp', 'L9' (layer), 'L9N123' (neuron), 'embed'")
    value: Num = Field(description="mean over rows for a set")
    spread: SpreadPart | None = None


class LogitAttribution(ToolResult):
    metric: str
    position: int
    token: str = Field(description="the token at that position (a set: the position's name)")
    by: str
    total: Num = Field(description="the metric from the model's logits")
    contributions: list[Contribution] = Field(description="the largest by |value| (by='head': heads only)")
    others: list[Contribution] | None = Field(description="by='head': the largest MLPs, embeddings, biases")
    rest: Num = Field(description="the sum of the contributions not listed")
    constant: Num = Field(description="bias terms no component owns (final norm bias, b_U)")
    set: SetInfo | None = Field(description="over a set: rows used and dropped")
    warnings: list[str] | None = Field(description="e.g. an answer typed without its leading space")
    plot: Plot | None


def _parts(pairs, spreads) -> list[Contribution]:
    spreads = spreads or [None] * len(pairs)
    return [Contribution(component=c, value=v, spread=spread_part(s)) for (c, v), s in zip(pairs, spreads, strict=True)]


def logit_attribution(
    ctx: Context,
    prompt: Rows | None = None,
    answer: TokenRows | None = None,
    baseline: TokenRows | None = None,
    dataset: DatasetRef = None,
    by: Literal["head", "layer", "component", "neuron"] = "head",
    pos: Position = -1,
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> LogitAttribution:
    """Direct logit attribution: what each head (MLPs ranked apart) / layer / component / neuron writes
    to logit(answer) − logit(baseline) at pos. Direct effects only: confirm with patch."""
    state = state_of(ctx)
    target = state.plots.target(plot, "dla", plot_path)
    with state.using(model) as entry:
        ps = prompt_set(state, entry, dataset, prompt, None, answer, baseline, needs_corrupted=False)
        if ps is None:
            if answer is None:
                raise ToolError("give answer (the token to attribute, e.g. ' Paris'), or dataset=<handle>")
            result = direct_logit_attribution(entry.model, prompt, answer, baseline, by=by, pos=pos, top_k=top_k)
            warnings = spacing_warnings(entry.model, prompt, [answer, baseline], pos)
        else:
            if pos != -1:
                raise ToolError("over a set, DLA reads each row's last token (END); leave pos at -1")
            result = direct_logit_attribution(entry.model, ps, by=by, top_k=top_k)
            warnings = spacing_warnings(entry.model, ps.rows[0].clean, [ps.rows[0].answer, ps.rows[0].baseline])
    drawn = state.plots.draw(lambda path: plots.plot_dla(result, path), target)
    listed = sum(v for _, v in result.contributions + (result.others or []))
    (name, value), first_spread = result.contributions[0], (result.spreads or [None])[0]
    other = f"; top non-head {result.others[0][0]} {result.others[0][1]:+.3f}" if result.others else ""
    return LogitAttribution(
        model=entry.handle, metric=result.metric, position=result.position,
        token=result.str_tokens[result.position], by=by, total=result.total,
        contributions=_parts(result.contributions, result.spreads),
        others=None if result.others is None else _parts(result.others, result.other_spreads),
        rest=result.rest, constant=result.constant, set=set_info(ps), warnings=warnings or None, plot=drawn,
        interpretation=warned(
            f"{name} contributes {figure(value, first_spread)} of the total {result.total:+.3f} ({result.metric}) at "
            f"{'END' if ps is not None else f'position {result.position}'} ({result.str_tokens[result.position]!r})"
            f"{other}; listed {listed:+.3f}, the rest {result.rest:+.3f}, bias terms {result.constant:+.3f}"
            f"{rows_said(ps)}", warnings))


class LogitLens(ToolResult):
    position: int
    token: str
    layers: list[str] = Field(description="'embed', then 'L0'..: the residual stream after that layer")
    top: list[list[str]] = Field(description="per layer, the top tokens, best first")
    top_prob: list[Num] = Field(description="per layer, the probability of the top token")
    targets: list[str]
    ranks: list[list[int]] = Field(description="[target][layer]: rank, 0 = top")
    probs: list[list[Num]] = Field(description="[target][layer]: probability (over a set: each row's answer, mean)")
    prob_ci: list[Num] | None = Field(None, description="over a set: per layer, the 95% half-width of probs[0]")
    top_rows: list[int] | None = Field(None, description="over a set: per layer, rows whose answer is the top token")
    set: SetInfo | None = None
    warnings: list[str] | None
    plot: Plot | None


def logit_lens(
    ctx: Context,
    prompt: Rows | None = None,
    targets: Annotated[list[Token], Field(max_length=1000, description="tokens to follow (a set: each row's answer)")] = (),
    dataset: DatasetRef = None,
    pos: Position = -1,
    top_k: Annotated[int, Field(ge=1, le=20)] = 1,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> LogitLens:
    """The logit lens: per layer, the residual stream's top tokens and each target's rank and
    probability, through the final norm. Where a prediction forms."""
    state = state_of(ctx)
    target = state.plots.target(plot, "logit-lens", plot_path)
    with state.using(model) as entry:
        answers = (targets if len(targets) > 1 else targets[0]) if isinstance(prompt, list) and targets else None
        ps = prompt_set(state, entry, dataset, prompt, None, answers, None, needs_corrupted=False)
        if ps is not None:
            if pos != -1:
                raise ToolError("over a set, the lens reads each row's last token (END); leave pos at -1")
            return _set_lens(entry, lens_logit_lens(entry.model, ps), ps)
        result = lens_logit_lens(entry.model, prompt, targets=targets or None, pos=pos, top_k=top_k)
        warnings = spacing_warnings(entry.model, prompt, targets, pos)
    drawn = state.plots.draw(lambda path: plots.plot_logit_lens(result, path), target)
    names = [t.token for t in result.layers[0].targets]
    ranks = [[r.targets[i].rank for r in result.layers] for i in range(len(names))]
    labels = [r.label for r in result.layers]
    followed = names[0] if names else result.layers[-1].top[0][0]  # the first target, else the final top token
    first_top = next((label for label, r in zip(labels, result.layers, strict=True)
                      if (r.targets[0].rank == 0 if names else r.top[0][0] == followed)), None)
    final = result.layers[-1]
    end = f"final rank {final.targets[0].rank}, p {final.targets[0].prob:.3f}" if names else \
        f"final p {final.top[0][1]:.3f}"
    return LogitLens(
        model=entry.handle, position=result.position, token=result.str_tokens[result.position], layers=labels,
        top=[[t for t, _ in r.top] for r in result.layers], top_prob=[r.top[0][1] for r in result.layers],
        targets=names, ranks=ranks, probs=[[r.targets[i].prob for r in result.layers] for i in range(len(names))],
        warnings=warnings or None, plot=drawn,
        interpretation=warned(f"{followed!r} first becomes the top token at {first_top} ({end})" if first_top else
                               f"{followed!r} never becomes the top token ({end})", warnings))


def _set_lens(entry, result, ps) -> LogitLens:
    """The logit lens over a set: each row's answer at its END, per layer the mean probability, its spread
    and the rows where it is the top token."""
    layers = result.layers
    first = result.first_top_layer
    final = layers[-1]
    return LogitLens(
        model=entry.handle, position=-1, token="END", layers=[layer.label for layer in layers], top=[], top_prob=[],
        targets=["answer"], ranks=[], probs=[[layer.answer_prob.mean for layer in layers]],
        prob_ci=[(layer.answer_prob.ci95[1] - layer.answer_prob.ci95[0]) / 2 for layer in layers],
        top_rows=[layer.answer_top for layer in layers], set=set_info(ps), warnings=None, plot=None,
        interpretation=(f"the answer first becomes the top token on most rows at {first}" if first else
                        "the answer is never the top token on most rows")
        + f"; at the last layer p {figure(final.answer_prob.mean, final.answer_prob)}, top on "
          f"{final.answer_top}/{result.n_rows}{rows_said(ps)}")


class HeadAttention(Part):
    head: str
    keys: list[list[int]] = Field(description="per query (from queries_start), its top keys, best first")
    weights: list[list[Num]] = Field(description="their attention weights")
    first: list[Num] = Field(description="per query, the weight on position 0 (the usual sink)")
    to: dict[str, list[Num]] | None = Field(None, description="over a set: named key → [mean, 95% half-width] "
                                                              "of END's attention")


class AttentionPattern(ToolResult):
    tokens: TokenWindow | None
    queries_start: int = Field(description="the query position of keys[0]")
    heads: list[HeadAttention]
    set: SetInfo | None = None
    plot: Plot | None


QUERY_WINDOW = 16  # queries shown without `detail`: the last ones


def attention_pattern(
    ctx: Context,
    heads: Annotated[list[HeadLabel], Field(min_length=1, max_length=16)],
    prompt: Prompt | None = None,
    top_k: Annotated[int, Field(ge=1, le=10, description="keys per query")] = 2,
    skip_first: Annotated[bool, Field(description="rank keys without position 0 (the sink)")] = True,
    dataset: DatasetRef = None,
    detail: Detail = False,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> AttentionPattern:
    """Where heads attend: per query (the last 16; all with detail) its top keys and weights, and the
    weight on the position-0 sink. Checks what a head found by another tool does."""
    state = state_of(ctx)
    target = state.plots.target(plot, "attention", plot_path)
    with state.using(model) as entry:
        if dataset is not None:
            ps = prompt_set(state, entry, dataset, prompt, needs_corrupted=False)
            return _set_attention(entry, attention_patterns(entry.model, ps, checks.head_labels(entry.model, heads)),
                                  ps)
        if prompt is None:
            raise ToolError("give the prompt, or dataset=<handle> (attention from each row's END to its named "
                            "positions)")
        result = attention_patterns(entry.model, prompt, checks.head_labels(entry.model, heads), top_k=top_k,
                                    skip_first=skip_first)
    drawn = state.plots.draw(lambda path: plots.plot_attention(result, path), target)
    start = 0 if detail else max(0, len(result.str_tokens) - QUERY_WINDOW)
    out = [HeadAttention(head=head_label(h.layer, h.head), keys=[[k for k, _ in q] for q in h.top[start:]],
                         weights=[[w for _, w in q] for q in h.top[start:]], first=h.first[start:])
           for h in result.heads]
    last = len(result.str_tokens) - 1

    def said(h: HeadAttention) -> str:
        keys = ", ".join(f"{k} {result.str_tokens[k]!r} {w:.2f}" for k, w in zip(h.keys[-1], h.weights[-1], strict=True))
        return f"{h.head} → {keys}" + (f" (position 0: {h.first[-1]:.2f})" if skip_first else "")
    return AttentionPattern(model=entry.handle, tokens=token_window(result.str_tokens, detail), queries_start=start,
                            heads=out, plot=drawn,
                            interpretation=f"at the last token ({last}, {result.str_tokens[last]!r}) the heads attend "
                                           f"most to: {'; '.join(said(h) for h in out[:4])}")


def _set_attention(entry, result, ps) -> AttentionPattern:
    heads = [HeadAttention(head=head_label(h.layer, h.head), keys=[], weights=[], first=[],
                           to={k: [v.mean, (v.ci95[1] - v.ci95[0]) / 2] for k, v in h.to.items()})
             for h in result.heads]
    said = "; ".join(f"{h.head} → " + ", ".join(f"{k} {v[0]:.2f} ± {v[1]:.2f}" for k, v in h.to.items())
                     for h in heads[:4])
    return AttentionPattern(model=entry.handle, tokens=None, queries_start=0, heads=heads, set=set_info(ps),
                            plot=None, interpretation=f"attention from each row's END: {said}{rows_said(ps)}")


TOOLS = [(logit_attribution, PLOTTING), (logit_lens, PLOTTING), (attention_pattern, PLOTTING)]
