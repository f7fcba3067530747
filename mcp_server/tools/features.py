"""features: one tool over a dictionary (SAE or transcoder) spliced into the model (lens/sae)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens.patching import logit_diff
from lens.sae import (
    SAE,
    DictionaryError,
    ablate_features,
    direct_attribution,
    feature_patch,
    max_activating,
    quality,
    steer_feature,
    top_features,
    train,
)
from mcp_server.schemas import ModelRef, Num, Plot, Prompt, ToolResult
from mcp_server.state import state_of
from mcp_server.tools.annotations import PLOTTING

Short = Annotated[str | None, Field(max_length=200)]  # a token (' Paris')
Analysis = Literal["top", "quality", "contexts", "attribution", "ablate", "steer"]


class Features(ToolResult):
    analysis: str
    dictionary: str = Field(description="the dictionary's architecture, hook and size")
    numbers: dict[str, Num] = Field(description="the analysis's headline numbers")
    report: str = Field(description="the analysis's text summary (cut to 3000 characters)")
    plot: Plot | None = None


def _dictionary(state, entry, source: str) -> SAE:
    """'default' / 'quick' (lens's trained ones), a SAELens folder, or 'release:sae_id' (SAELens's registry)."""
    store = state.__dict__.setdefault("dictionaries", {})
    key = (entry.handle, source)
    if key not in store:
        if source in ("default", "quick"):
            sae = train.default_dictionary(entry.model, train.QUICK if source == "quick" else train.Recipe(),
                                           verbose=False)
        elif Path(source).expanduser().is_dir():
            state.check_allowed(source)  # dictionary folders are confined like model paths (--model-dir)
            sae = SAE.load(Path(source).expanduser(), device=entry.model.device)
        elif ":" in source:
            sae = SAE.from_pretrained(*source.split(":", 1), device=entry.model.device)
        else:
            raise ToolError(f"dictionary {source!r} is not 'default', 'quick', a SAELens folder or 'release:sae_id'")
        store[key] = sae
    return store[key]


def features(
    ctx: Context,
    analysis: Analysis,
    prompts: Annotated[list[Prompt], Field(min_length=1, max_length=64)],
    dictionary: Annotated[str, Field(max_length=1000, description=(
        "'default' (trained here, cached), 'quick', a SAELens folder, or 'release:sae_id'"))] = "default",
    feature: Annotated[list[int], Field(max_length=32)] = (),
    answer: Short = None,
    baseline: Short = None,
    corrupted: Annotated[str | None, Field(max_length=50_000)] = None,
    coefficients: Annotated[list[float], Field(min_length=1, max_length=8)] = (0.0, 8.0),
    mode: Literal["add", "clamp"] = "add",
    top_k: Annotated[int, Field(ge=1, le=50)] = 5,
    plot: bool = False,
    model: ModelRef = None,
) -> Features:
    """Dictionary (SAE/transcoder) features. analysis: top (per token); quality (L0, explained variance,
    CE loss recovered); contexts (max-activating tokens of feature[0]); attribution (features behind
    answer - baseline: direct, or patched from corrupted); ablate (zero features); steer (add/clamp
    feature[0] while generating). plot: tokens x features heatmap (top)."""
    state = state_of(ctx)
    with state.using(model) as entry:
        m = entry.model
        try:
            sae = _dictionary(state, entry, dictionary)
            result, numbers = _run(m, sae, analysis, prompts, list(feature), answer, baseline, corrupted,
                                   list(coefficients), mode, top_k)
        except (DictionaryError, ValueError) as e:
            raise ToolError(str(e)) from e
        target = state.plots.target(plot and analysis == "top", "features", None)
        drawn = state.plots.draw(result.plot, target) if target else None
    report = result.summary()
    return Features(model=entry.handle, analysis=analysis, dictionary=repr(sae), numbers=numbers,
                    report=report[:3000], plot=drawn, interpretation=report.split("\n")[0][:300])


def _run(m, sae, analysis, prompts, feature, answer, baseline, corrupted, coefficients, mode, top_k):
    needs = {"contexts": feature, "steer": feature, "ablate": feature, "attribution": answer}
    if analysis in needs and not needs[analysis]:
        raise ToolError(f"analysis={analysis!r} needs {'answer' if analysis == 'attribution' else 'feature'}")
    if analysis == "top":
        r = top_features(m, sae, prompts, k=top_k)
        return r, {"l0": r.l0}
    if analysis == "quality":
        r = quality(m, sae, prompts)
        return r, {k: getattr(r, k) for k in ("l0", "explained_variance", "ce_loss_recovered", "loss_clean",
                                              "loss_spliced", "loss_zero_ablated")}
    if analysis == "contexts":
        r = max_activating(m, sae, prompts, feature[0], k=top_k)
        return r, {"frequency": r.frequency, "max": r.contexts[0].activation if r.contexts else 0.0}
    if analysis == "attribution" and corrupted is None:
        r = direct_attribution(m, sae, prompts[0], answer, baseline, top_k=top_k)
        return r, {"total": r.total, "features": r.sum_of_features, "error_term": r.error_term}
    metric = logit_diff(m, answer, baseline) if answer else None
    if analysis == "attribution":
        r = feature_patch(m, sae, prompts[0], corrupted, metric, top_k=top_k)
        return r, {"clean": r.clean_value, "corrupted": r.corrupted_value}
    if analysis == "ablate":
        if metric is None:
            raise ToolError("analysis='ablate' needs answer (and optionally baseline) to score")
        r = ablate_features(m, sae, prompts[0], feature, metric)
        return r, {"base": r.base_value, "all_ablated": r.effects[-1].value}
    r = steer_feature(m, sae, prompts[0], feature[0], mode, coefficients, max_new_tokens=16,
                               tokens=[t for t in (answer, baseline) if t])
    return r, {f"x{g.coefficient:g}": next(iter(g.logit_shifts.values()), 0.0) for g in r.generations}


TOOLS = [(features, PLOTTING)]
