"""The argument types and result parts the tools share.

Arguments carry their constraints (so a bad value is refused before any work, with the
field named) and a description (which is what an agent reads in the tool's input schema).
Results are small: numbers are rounded to 5 significant figures in the JSON, token lists
are clipped to a window unless `detail` asks for all of them.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer


def _round(x: float | None) -> float | None:
    """5 significant figures; None for NaN and infinities, which JSON cannot carry."""
    return float(f"{x:.5g}") if x is not None and math.isfinite(x) else None


# A number in a result: null where the computation gave no finite value (e.g. a score over no positions).
Num = Annotated[float | None, PlainSerializer(_round, return_type=float | None)]

# --- arguments ------------------------------------------------------------------------------

# Arguments every tool shares carry no description here: the server's instructions explain them once
# (model, top_k, detail, plot, plot_path, and how positions and layers count).
ModelRef = Annotated[str | None, Field(max_length=1000)]
Prompt = Annotated[str, Field(min_length=1, max_length=50_000)]
Token = Annotated[str, Field(min_length=1, max_length=200, description="one token, with its leading space (' Paris')")]
TopK = Annotated[int, Field(ge=1, le=200)]
Detail = bool
Position = Annotated[int, Field(ge=-100_000, le=100_000, description="token position, -1 = last")]
Positions = Annotated[list[Annotated[int, Field(ge=-100_000, le=100_000)]] | None, Field(min_length=1, max_length=4096)]
Layers = Annotated[list[Annotated[int, Field(ge=-1000, le=1000)]] | None, Field(min_length=1, max_length=1000)]
HeadLabel = Annotated[str, Field(pattern=r"^\s*[Ll]\d{1,4}\s*[Hh]\d{1,4}\s*$", description="a head as 'L5H3'")]

TOKEN_WINDOW = 64  # tokens shown without `detail`


# --- result parts ---------------------------------------------------------------------------

class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolResult(Part):
    model: str = Field(description="the handle of the model that ran")
    interpretation: str = Field(description="one line stating what the numbers show")


class TokenProb(Part):
    token: str
    id: int
    prob: Num
    logit: Num


class TokenWindow(Part):
    """The prompt's tokens, aligned to positions: str_tokens[i] is position start + i."""

    n_tokens: int
    start: int = Field(description="the position of str_tokens[0]; > 0 when only the last tokens are shown")
    str_tokens: list[str]


def token_window(str_tokens: list[str], detail: bool = False, limit: int = TOKEN_WINDOW) -> TokenWindow:
    start = 0 if detail or len(str_tokens) <= limit else len(str_tokens) - limit
    return TokenWindow(n_tokens=len(str_tokens), start=start, str_tokens=str_tokens[start:])


class Plot(Part):
    path: str = Field(description="absolute path of the PNG")
    uri: str = Field(description="the same file as an MCP resource")


def warned(interpretation: str, warnings: list[str]) -> str:
    """An interpretation with the warnings after it, so an agent reading one line sees them."""
    return f"{interpretation}. WARNING: {' '.join(warnings)}" if warnings else interpretation


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"
