"""dataset: a prompt set on the server, generated for a task or loaded from a file, under a handle the
set-taking tools accept (dataset=...)."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens.data import PromptSet, make_dataset
from mcp_server.schemas import ModelRef, Num, Part, ToolResult
from mcp_server.state import state_of
from mcp_server.tools.annotations import STORING

Task = Literal["ioi", "factual", "induction", "greater_than", "agreement"]


class Example(Part):
    clean: str
    corrupted: str | None
    answer: str
    baseline: str | None


class Filtered(Part):
    n_before: int
    accuracy_before: Num = Field(description="rows whose answer the model ranks first, before filtering")
    accuracy_after: Num


class Dataset(ToolResult):
    dataset: str = Field(description="the handle the set-taking tools accept as dataset=...")
    source: str
    rows: int
    dropped: dict[str, int] = Field(description="rows left out, by reason")
    tokens: list[int] = Field(description="the shortest and longest row, in tokens")
    positions: list[str] = Field(description="named positions each row has (positions=['S2'] in patch)")
    example: Example
    filtered: Filtered | None


def dataset(
    ctx: Context,
    task: Task | None = None,
    path: Annotated[str | None, Field(max_length=300, description=(
        ".jsonl/.csv in the output folder: clean, corrupted, answer, baseline"))] = None,
    n: Annotated[int, Field(ge=1, le=1000)] = 50,
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0,
    corruption: Annotated[Literal["swap", "abc", "subject"] | None, Field(description="ioi: swap/abc")] = None,
    filter: Annotated[bool, Field(description="keep the rows the model gets right")] = False,
    model: ModelRef = None,
) -> Dataset:
    """A prompt set for the tools' dataset= argument: generated for a task (seeded) or loaded from a
    file. Rows failing checks are dropped and counted."""
    state = state_of(ctx)
    if (task is None) == (path is None):
        raise ToolError("give task (to generate a set) or path (to load one), not both or neither")
    with state.using(model) as entry:
        m = entry.model
        if path is not None:
            if corruption is not None:
                raise ToolError("corruption is for generated sets; a file's rows carry their corrupted prompts")
            file = state.plots.inside(path, "path")
            if not file.is_file():
                raise ToolError(f"no dataset file {path!r} in the output folder {state.plots.root}: write the "
                                f".jsonl or .csv there first")
            ps = PromptSet.from_file(m, file)
        else:
            ps = make_dataset(m, task, n=n, seed=seed, corruption=corruption)
        report = None
        if filter:
            ps, report = ps.filter(m)
        stored = state.store_dataset(entry.handle, ps)
    row = ps.rows[0]
    filtered = None if report is None else Filtered(n_before=report.n_before, accuracy_before=report.accuracy_before,
                                                    accuracy_after=report.accuracy_after)
    dropped = sum(ps.dropped.values())
    return Dataset(
        model=entry.handle, dataset=stored.handle, source=ps.source, rows=len(ps), dropped=ps.dropped,
        tokens=[int(ps.lengths.min()), int(ps.lengths.max())], positions=ps.position_names,
        example=Example(clean=row.clean, corrupted=row.corrupted, answer=row.answer, baseline=row.baseline),
        filtered=filtered,
        interpretation=(f"{stored.handle}: {len(ps)} rows ({task or path}), {dropped} dropped"
                        + (f" {ps.dropped}" if dropped else "") + f"; positions {ps.position_names}"
                        + ("" if report is None else f"; {report.summary()}")))


TOOLS = [(dataset, STORING)]
