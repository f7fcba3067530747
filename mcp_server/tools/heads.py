"""detect_heads: heads by what they attend to: induction (with the induction loss), previous-token, duplicate-token."""

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
    loss_first_copy: Num | None = Field(description="induction: mean next-token loss on the first copy (nats)")
    loss_second_copy: Num | None = Field(description="induction: the same on the repeat; low when heads copy")
    loss_curve: list[Num] | None = Field(description="induction: per-position loss in up to 10 bins, both copies")
    plot: Plot | None


def detect_heads(
    ctx: Context,
    kind: Literal["induction", "previous_token", "duplicate_token"] = "induction",
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
    """Score every head as induction (with the loss on the first vs repeated copy), duplicate-token
    (both on repeated random tokens) or previous-token (on text); the top heads."""
    state = state_of(ctx)
    target = state.plots.target(plot, f"heads-{kind}", plot_path)
    with state.using(model) as entry:
        scores = lens_detect_heads(entry.model, kind, seq_len=seq_len, batch=batch, prompt=prompt, seed=seed)
        loss = induction_loss(entry.model, seq_len=seq_len, batch=batch, seed=seed) if kind == "induction" else None
    drawn = state.plots.draw(lambda path: plots.plot_head_scores(scores, path), target)
    if torch.tensor(scores.scores).isnan().any():
        raise ToolError(f"the {scores.kind} scores are undefined on {scores.on}: no query position has a key to "
                        f"score (BOS excluded); use a longer prompt or sequence")
    top = _top(scores, top_k)
    said = (f"{top[0].head} has the top {scores.kind.replace('_', '-')} score, {top[0].score:.2f} (next "
            f"{', '.join(f'{h.head} {h.score:.2f}' for h in top[1:3])}; median head {scores.median:.3f})")
    curve = None if loss is None else torch.tensor(loss.per_position)
    return HeadDetection(
        model=entry.handle, kind=scores.kind, on=scores.on, top=top, median=scores.median, plot=drawn,
        loss_first_copy=None if loss is None else loss.first_half,
        loss_second_copy=None if loss is None else loss.second_half,
        loss_curve=None if curve is None else [float(c.mean()) for c in curve.tensor_split(min(10, len(curve)))],
        interpretation=said if loss is None else (f"{said}; loss {loss.first_half:.2f} on the first copy, "
                                                  f"{loss.second_half:.2f} on the repeat"))


TOOLS = [(detect_heads, PLOTTING)]
