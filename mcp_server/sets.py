"""Prompt sets through the tools: list arguments and dataset handles become a lens.data.PromptSet.

The tools that take prompts (patch, attribution_patch, path_patch, ablate, logit_attribution, ...)
accept, under their usual names, one string (one prompt: exactly the single-prompt analysis), a list
of strings (one per row; answer and baseline may stay one string for every row), or `dataset`, the
handle of a set made by the `dataset` tool. A set runs through lens's set-aware analyses in one
batched sweep; what comes back is the mean over rows with its spread (SpreadPart), rows used and
dropped, and an interpretation that states the spread.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens.data import PromptSet, Spread
from mcp_server.schemas import Num, Part

Text = Annotated[str, Field(min_length=1, max_length=50_000)]
# one string, or one per row (each bound on its own branch: a string's bound is in characters, a list's in rows)
Rows = Text | Annotated[list[Text], Field(max_length=1000)]
TokenRows = Annotated[str, Field(min_length=1, max_length=200)] | Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=1000)]
DatasetRef = Annotated[str | None, Field(max_length=100)]  # a handle from the dataset tool (instructions)
# [first, last] predicting positions of metric='loss' (a negative one counts from each row's end)
Span = Annotated[list[Annotated[int, Field(ge=-100_000, le=100_000)]] | None, Field(min_length=2, max_length=2)]
SetPositions = Annotated[list[int | Annotated[str, Field(max_length=40)]] | None, Field(min_length=1, max_length=4096)]


class SpreadPart(Part):
    """One figure over a set's rows."""

    std: Num
    ci95: list[Num] = Field(description="95% interval of the mean")
    agree: int = Field(description="rows whose value has the mean's sign")
    n: int


class SetInfo(Part):
    rows: int = Field(description="rows the figures are over")
    dropped: dict[str, int] = Field(description="rows left out, by reason")


def spread_part(s: Spread | None) -> SpreadPart | None:
    if s is None or s.n < 2:
        return None
    return SpreadPart(std=s.std, ci95=list(s.ci95), agree=s.agreement, n=s.n)


def set_info(ps: PromptSet | None) -> SetInfo | None:
    return None if ps is None else SetInfo(rows=len(ps), dropped=ps.dropped)


def is_list(*values) -> bool:
    return any(isinstance(v, list) for v in values)


def prompt_set(state, entry, dataset: str | None, clean, corrupted=None, answer=None, baseline=None,
               needs_corrupted: bool = True) -> PromptSet | None:
    """The set a call names (a dataset handle, or list arguments), or None for a single prompt."""
    if dataset is not None:
        given = [n for n, v in (("clean/prompt", clean), ("corrupted", corrupted), ("answer", answer),
                                ("baseline", baseline)) if v is not None]
        if given:
            raise ToolError(f"give either dataset or {', '.join(given)}, not both: the dataset's rows carry them")
        return state.dataset(dataset, entry.handle).prompt_set
    if clean is None:
        raise ToolError("give the prompt (clean=... / prompt=...; a list for several rows) or dataset=<handle>")
    if not is_list(clean, corrupted, answer, baseline):
        return None
    if not isinstance(clean, list):
        raise ToolError("several rows need one prompt per row: give clean/prompt as a list too")
    if answer is None:
        raise ToolError("give answer (one token per row, or one for all rows)")
    if needs_corrupted and corrupted is None:
        raise ToolError("give corrupted prompts, one per clean prompt")
    # Analyses that read the clean prompts only (ablation, attribution) build a set without corrupted
    # prompts; lens marks such a set corruption="noise", which the patching functions refuse.
    return PromptSet.from_lists(entry.model, clean, corrupted if needs_corrupted else None, answer, baseline,
                                corruption="prompt" if needs_corrupted else "noise", source="tool arguments")


def figure(value: float, s: Spread | None, percent: bool = False) -> str:
    """"52% ± 6%, positive on 48/50 prompts" (over a set) or "52%" (one prompt)."""
    if s is None or s.n < 2:
        return f"{round(100 * value)}%" if percent else f"{value:+.3f}"
    half = (s.ci95[1] - s.ci95[0]) / 2
    sign = "positive" if s.mean >= 0 else "negative"
    number = f"{round(100 * value)}% ± {round(100 * half)}%" if percent else f"{value:+.3f} ± {half:.3f}"
    return f"{number}, {sign} on {s.agreement}/{s.n} prompts"


def rows_said(ps: PromptSet | None) -> str:
    if ps is None:
        return ""
    dropped = sum(ps.dropped.values())
    return f" [over {len(ps)} prompts" + (f"; {dropped} dropped: {ps.dropped}]" if dropped else "]")
