"""Finding heads by what they attend to: induction (with the induction loss), previous-token, duplicate-token."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens import plots
from lens.analysis import HeadScores, induction_loss
from lens.analysis import detect_heads as lens_detect_heads
from mcp_server.plots import DrawPlot, PlotPath
from mcp_server.schemas import ModelRef, Num, Part, Plot, ToolResult, TopK, head_label
from mcp_server.state import state_of
from mcp_server.tools.annotations import PLOTTING

SeqLen = Annotated[int, Field(ge=2, le=512, description="length of the repeated random sequence")]
Batch = Annotated[int, Field(ge=1, le=32, description="random sequences")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


class HeadScore(Part):
    head: str
    score: Num


def _top(scores: HeadScores, k: int) -> list[HeadScore]:
    grid = torch.tensor(scores.scores)  # [layer, head]
    order = grid.flatten().argsort(descending=True)[:k]
    n_heads = grid.shape[1]
    return [HeadScore(head=head_label(int(i) // n_heads, int(i) % n_heads), score=float(grid.flatten()[i]))
            for i in order]


class HeadDetection(ToolResult):
    kind: str
    on: str = Field(description="what the scores were computed on")
    top: list[HeadScore] = Field(description="heads by score (mean attention to the expected key, 0..1)")
    median: Num = Field(description="the median head's score, for scale")
    plot: Plot | None


def _detection(entry, scores: HeadScores, top_k: int, drawn: Plot | None) -> HeadDetection:
    if torch.tensor(scores.scores).isnan().any():
        raise ToolError(f"the {scores.kind} scores are undefined on {scores.on}: no query position has a key to "
                        f"score (BOS excluded); use a longer prompt or sequence")
    top = _top(scores, top_k)
    return HeadDetection(model=entry.handle, kind=scores.kind, on=scores.on, top=top, median=scores.median, plot=drawn,
                         interpretation=(f"{top[0].head} has the top {scores.kind.replace('_', '-')} score, "
                                         f"{top[0].score:.2f} (next {', '.join(f'{h.head} {h.score:.2f}' for h in top[1:3])}; "
                                         f"median head {scores.median:.3f})"))


def detect_heads(
    ctx: Context,
    kind: Literal["previous_token", "duplicate_token", "induction"] = "previous_token",
    prompt: Annotated[str | None, Field(min_length=1, max_length=50_000, description=(
        "text for previous_token; default: a built-in paragraph"))] = None,
    seq_len: SeqLen = 40,
    batch: Batch = 4,
    seed: Seed = 0,
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> HeadDetection:
    """Score every head as previous-token (on text), duplicate-token or induction (on repeated
    random tokens; BOS excluded): the top heads. Maps heads by role."""
    state = state_of(ctx)
    target = state.plots.target(plot, f"heads-{kind}", plot_path)
    with state.using(model) as entry:
        scores = lens_detect_heads(entry.model, kind, seq_len=seq_len, batch=batch, prompt=prompt, seed=seed)
    drawn = state.plots.draw(lambda path: plots.plot_head_scores(scores, path), target)
    return _detection(entry, scores, top_k, drawn)


class InductionHeads(HeadDetection):
    loss_first_copy: Num = Field(description="mean next-token loss on the first copy of the random tokens (nats)")
    loss_second_copy: Num = Field(description="the same on the repeated copy: low when induction heads copy")
    loss_curve: list[Num] = Field(description="the per-position loss averaged in up to 10 equal bins, both copies")


def find_induction_heads(
    ctx: Context,
    seq_len: SeqLen = 40,
    batch: Batch = 4,
    seed: Seed = 0,
    top_k: TopK = 10,
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> InductionHeads:
    """Induction heads on a repeated random sequence: each head's attention from the second copy
    to the token after the first occurrence, and the loss on the first vs repeated copy. The
    first survey of in-context copying."""
    state = state_of(ctx)
    target = state.plots.target(plot, "induction", plot_path)
    with state.using(model) as entry:
        scores = lens_detect_heads(entry.model, "induction", seq_len=seq_len, batch=batch, seed=seed)
        loss = induction_loss(entry.model, seq_len=seq_len, batch=batch, seed=seed)
    drawn = state.plots.draw(lambda path: plots.plot_head_scores(scores, path), target)
    found = _detection(entry, scores, top_k, drawn)
    curve = torch.tensor(loss.per_position)
    bins = [float(chunk.mean()) for chunk in curve.tensor_split(min(10, len(curve)))]
    return InductionHeads(
        **found.model_dump(exclude={"interpretation"}), loss_first_copy=loss.first_half,
        loss_second_copy=loss.second_half, loss_curve=bins,
        interpretation=(f"{found.interpretation}; loss {loss.first_half:.2f} on the first copy, "
                        f"{loss.second_half:.2f} on the repeat"))


TOOLS = [(find_induction_heads, PLOTTING), (detect_heads, PLOTTING)]
