"""The results of patching and ablation sweeps: a grid of scores with its axes, hotspots, summary and plot."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lens.analysis.common import Result
from lens.data.stats import GridSpread, Spread, grid_spread

AXIS_PREFIX = {"layer": "L", "head": "H", "kv_head": "KV", "neuron": "N"}
AXIS_PLURAL = {"pos": "positions", "src_pos": "source positions", "kv_head": "kv heads"}


class Hotspot(Result):
    label: str  # e.g. "L9H6", "L4 @13 ' to'", "L2N1031"
    index: list[int]  # the coordinates along the result's axes (layer numbers, not row numbers)
    score: float  # the metric with this intervention
    effect: float  # score - baseline
    normalised: float | None = None  # 0 = corrupted, 1 = clean (patching only)
    spread: Spread | None = None  # over a prompt set: the spread of the per-row values behind `normalised`
    # (or behind `effect` when the set's runs cannot be normalised)

    def summary(self) -> str:
        norm = "" if self.normalised is None else f"  ({self.normalised:+.3f} normalised)"
        line = f"{self.label:>22}  {self.score:+.4f}  effect {self.effect:+.4f}{norm}"
        if self.spread is not None and self.spread.n > 1:
            line += f"\n{'':>24}{'restores ' if self.normalised is not None else 'effect '}" \
                    f"{self.spread.text(percent=self.normalised is not None)}"
        return line


class GridResult(Result):
    """Scores on a grid: axes names (e.g. ["layer", "pos"]), the coordinates along each (the layers and
    positions swept), scores as nested lists [len(coords[0])][len(coords[1])]..."""

    axes: list[str]
    coords: list[list[int]]
    scores: list | float  # nested lists over the axes (a float when nothing is swept)
    baseline: float  # the metric without the intervention (the corrupted run for patching)
    str_tokens: list[str]  # the tokens the positions refer to (the clean prompt's, for patching)
    top: list[Hotspot]
    names: list[str] | None = None  # the components along a "component" axis
    n_rows: int = 1  # the prompts the figures are over (a prompt set's rows; scores are their mean)
    spread: GridSpread | None = None  # over a set: per-cell spread of the per-row values (see set_figures)
    row_scores: list | None = None  # [n_rows, *grid] each row's scores, on request (per_row=True)
    corrupted_str_tokens: list[str] | None = None  # patching: the corrupted prompt's tokens

    def _per_layer_values(self) -> torch.Tensor:
        """[layer, pos]: what "restores most" ranks (normalised scores where there are, else effects)."""
        return self.effects

    def best_positions(self) -> list[int] | None:
        """For a layer × position sweep: per swept layer, the position where the intervention moves the metric
        most towards the clean run (the largest normalised score; for ablations the largest |effect|). The
        movement of information (e.g. subject → last token) reads off this list. None for other sweeps."""
        if self.axes != ["layer", "pos"]:
            return None
        values = self._per_layer_values().nan_to_num(nan=-torch.inf)
        return [self.coords[1][int(i)] for i in values.argmax(-1)]

    def position_runs(self) -> list[tuple[int, int, int]]:
        """best_positions() as runs (first layer, last layer, position) of consecutive swept layers."""
        best = self.best_positions() or []
        runs: list[tuple[int, int, int]] = []
        for layer, pos in zip(self.coords[0] if best else [], best, strict=True):
            if runs and runs[-1][2] == pos:
                runs[-1] = (runs[-1][0], layer, pos)
            else:
                runs.append((layer, layer, pos))
        return runs

    def token_at(self, pos: int) -> str:
        """The token at a position, both forms where the clean and corrupted prompts differ: "' John'/' Mary'"."""
        return position_token(pos, self.str_tokens, self.corrupted_str_tokens)

    @property
    def tensor(self) -> torch.Tensor:
        """The scores as a float64 tensor, one dimension per axis."""
        return torch.tensor(self.scores, dtype=torch.float64)

    @property
    def effects(self) -> torch.Tensor:
        """scores - baseline."""
        return self.tensor - self.baseline

    def _values_to_plot(self) -> tuple[torch.Tensor, str]:
        return self.effects, "change in the metric"

    def plot(self, path) -> str:
        """A heatmap (layer × position, layer × head, (layer, head) × position, or one row); returns the path."""
        from lens import plots
        values, colorbar = self._values_to_plot()
        labels = [axis_labels(a, c, self.str_tokens, self.names) for a, c in zip(self.axes, self.coords, strict=True)]
        if self.axes == ["layer", "pos"]:
            tokens = [self.str_tokens[p] for p in self.coords[1]]
            return plots.plot_layer_position(values.tolist(), tokens, self._title(), colorbar, path)
        if values.dim() == 3:  # [layer, pos, head] → rows (layer, head), columns pos
            rows = [f"{layer}{head}" for layer in labels[0] for head in labels[2]]
            values, labels = values.permute(0, 2, 1).flatten(0, 1), [rows, labels[1]]
            xlabel, ylabel = "pos", "layer, head"
        elif values.dim() == 2:
            xlabel, ylabel = self.axes[1], self.axes[0]
        elif values.dim() == 1:
            values, labels, xlabel, ylabel = values[None], [[""], labels[0]], self.axes[0], ""
        else:
            values, labels, xlabel, ylabel = values.view(1, 1), [[""], ["all together"]], "", ""
        return plots.heatmap(values.nan_to_num().tolist(), labels[0], labels[1], self._title(), colorbar, path,
                             xlabel=xlabel, ylabel=ylabel)

    def _title(self) -> str:  # pragma: no cover - subclasses say what was done
        return ""


class PatchResult(GridResult):
    """Activation, attribution or path patching: the metric of the corrupted run with each patch."""

    method: str  # "activation patching", "attribution patching (estimate)", "path patching ..."
    what: str
    metric: str
    clean: str
    corrupted: str
    clean_value: float
    normalised: list | float | None  # (score - corrupted) / (clean - corrupted), when they differ

    @property
    def corrupted_value(self) -> float:
        return self.baseline

    def _per_layer_values(self) -> torch.Tensor:
        return self.effects if self.normalised is None else torch.tensor(self.normalised, dtype=torch.float64)

    def _values_to_plot(self) -> tuple[torch.Tensor, str]:
        if self.normalised is None:
            return self.effects, "change in the metric"
        return torch.tensor(self.normalised, dtype=torch.float64), "normalised metric (0 = corrupted, 1 = clean)"

    def _title(self) -> str:
        return f"{self.method} of {self.what}: {self.metric}\nclean {self.clean!r}\ncorrupted {self.corrupted!r}"

    def summary(self) -> str:
        shape = _shape(self.axes, self.coords) or "one patch"
        rows = f" over {self.n_rows} prompts (means)" if self.n_rows > 1 else ""
        head = (f"{self.method} of {self.what} ({shape}) on {self.metric}{rows}: clean {self.clean_value:+.4f}, "
                f"corrupted {self.baseline:+.4f}")
        lines = [head, "  top hotspots by |effect|:"]
        lines += ["  " + h.summary() for h in self.top]
        return "\n".join(lines)


class AblationResult(GridResult):
    """The metric with each component (or all listed ones together) ablated."""

    method: str  # "zero", "mean" or "resample"
    what: str
    metric: str
    prompt: str

    def _per_layer_values(self) -> torch.Tensor:
        return self.effects.abs()

    def _title(self) -> str:
        return f"{self.method} ablation of {self.what}: change in {self.metric}\non {self.prompt!r}"

    def summary(self) -> str:
        shape = _shape(self.axes, self.coords) or "together"
        rows = f" over {self.n_rows} prompts (means)" if self.n_rows > 1 else ""
        lines = [f"{self.method} ablation of {self.what} ({shape}) on {self.metric}{rows}: unablated "
                 f"{self.baseline:+.4f}",
                 "  largest changes:"]
        lines += ["  " + h.summary() for h in self.top]
        return "\n".join(lines)


def _shape(axes: Sequence[str], coords: Sequence[Sequence[int]]) -> str:
    return " × ".join(f"{len(c)} {AXIS_PLURAL.get(a, a + 's')}" for a, c in zip(axes, coords, strict=True))


def axis_labels(axis: str, coords: Sequence[int], str_tokens: Sequence[str],
                names: Sequence[str] | None = None) -> list[str]:
    if axis == "component" and names is not None:
        return [names[c] for c in coords]
    if axis == "pos":
        return [f"{p} {str_tokens[p]!r}" if p < len(str_tokens) else str(p) for p in coords]
    return [f"{AXIS_PREFIX.get(axis, axis)}{c}" for c in coords]


def position_token(p: int, str_tokens: Sequence[str], corrupted_str_tokens: Sequence[str] | None = None) -> str:
    """"' to'", or "' John'/' Mary'" (clean/corrupted) where the prompts differ at p; "" past the end."""
    if p >= len(str_tokens):
        return ""
    clean = repr(str_tokens[p])
    if corrupted_str_tokens is not None and p < len(corrupted_str_tokens) and corrupted_str_tokens[p] != str_tokens[p]:
        return f"{clean}/{corrupted_str_tokens[p]!r}"
    return clean


def hotspot_label(axes: Sequence[str], index: Sequence[int], str_tokens: Sequence[str],
                  names: Sequence[str] | None = None, corrupted_str_tokens: Sequence[str] | None = None) -> str:
    """"L9H6", "L4 @13 ' to'", "L3H2 @5 ' Mary'": the component first, then the position; where the clean
    and corrupted tokens differ there, both: "L0 @10 ' John'/' Mary'" (clean/corrupted)."""
    parts = {axis: value for axis, value in zip(axes, index, strict=True)}
    if "component" in parts and names is not None:
        return names[parts["component"]]
    name = "".join(f"{AXIS_PREFIX.get(axis, axis)}{parts[axis]}" for axis in axes if axis not in ("pos", "src_pos"))
    if "pos" in parts:
        p = parts["pos"]
        name += f" @{p} {position_token(p, str_tokens, corrupted_str_tokens)}".rstrip()
    if "src_pos" in parts:
        name += f"→{parts['src_pos']}"
    return name


def hotspots(scores: torch.Tensor, baseline: float, axes: Sequence[str], coords: Sequence[Sequence[int]],
             str_tokens: Sequence[str], top_k: int, normalised: torch.Tensor | None = None,
             names: Sequence[str] | None = None, cells: GridSpread | None = None,
             cell_means: torch.Tensor | None = None, corrupted_str_tokens: Sequence[str] | None = None) -> list[Hotspot]:
    """The top_k entries by |score - baseline|."""
    effects = (scores - baseline).nan_to_num()
    order = effects.abs().flatten().argsort(descending=True)[:top_k]
    spots = []
    for flat in order.tolist():
        rows = list(torch.unravel_index(torch.tensor(flat), scores.shape)) if scores.dim() else []
        index = [coords[a][int(r)] for a, r in enumerate(rows)]
        spots.append(Hotspot(
            label=hotspot_label(axes, index, str_tokens, names, corrupted_str_tokens) if axes else "all", index=index,
            score=float(scores.flatten()[flat]), effect=float(effects.flatten()[flat]),
            normalised=None if normalised is None else float(normalised.flatten()[flat]),
            spread=None if cells is None else cells.cell(tuple(int(r) for r in rows),
                                                         float(cell_means.flatten()[flat]))))
    return spots


def normalise_scores(scores: torch.Tensor, clean_value: float, corrupted_value: float) -> torch.Tensor | None:
    """(scores - corrupted) / (clean - corrupted), or None when clean and corrupted score alike."""
    if abs(clean_value - corrupted_value) <= 1e-6 * max(1.0, abs(clean_value)):
        return None
    return (scores - corrupted_value) / (clean_value - corrupted_value)


def set_figures(row_scores: torch.Tensor, clean_rows: torch.Tensor, corrupted_rows: torch.Tensor,
                keep_rows: bool) -> tuple[torch.Tensor, torch.Tensor | None, GridSpread]:
    """(per-row values behind the spread, normalised means or None, GridSpread) of a sweep over a set.

    How normalised patching is averaged over rows: the ratio of means, (mean patched - mean corrupted) /
    (mean clean - mean corrupted), which is the normalised metric of the whole batch (as a batched
    TransformerLens metric gives it). Per-row ratios are unstable: a row whose clean and corrupted runs
    score nearly alike divides by nearly zero. The spread is that of each row's effect in the same units,
    (patched_i - corrupted_i) / (mean clean - mean corrupted), whose mean is exactly the ratio of means;
    sign agreement counts the rows where the patch moves the metric towards clean. Without a clean-corrupted
    gap, the spread is that of the raw effects patched_i - corrupted_i."""
    corrupted = corrupted_rows.view(-1, *[1] * (row_scores.dim() - 1))
    effects = row_scores - corrupted  # [n_rows, *grid]
    gap = float(clean_rows.mean() - corrupted_rows.mean())
    normalisable = abs(gap) > 1e-6 * max(1.0, abs(float(clean_rows.mean())))
    values = effects / gap if normalisable else effects
    means, cells = grid_spread(values, keep_rows)
    return values, means if normalisable else None, cells


def patch_result(method: str, what: str, metric: str, clean: str, corrupted: str, scores: torch.Tensor,
                 clean_value: float | torch.Tensor, corrupted_value: float | torch.Tensor, axes: Sequence[str],
                 coords: Sequence[Sequence[int]], str_tokens: Sequence[str], top_k: int,
                 names: Sequence[str] | None = None, per_row: bool = False,
                 corrupted_str_tokens: Sequence[str] | None = None) -> PatchResult:
    """The result of a sweep; over a prompt set, clean_value and corrupted_value are per row [n_rows] and
    scores [n_rows, *grid], and the result holds their means, the spread and (per_row) every row.
    corrupted_str_tokens (one prompt): hotspots at a position where the prompts differ name both tokens."""
    scores = scores.double().cpu()
    cells = cell_means = row_scores = None
    n_rows = 1
    if isinstance(clean_value, torch.Tensor):
        clean_rows, corrupted_rows, row_scores = clean_value.double().cpu(), corrupted_value.double().cpu(), scores
        _, cell_means, cells = set_figures(row_scores, clean_rows, corrupted_rows, per_row)
        n_rows, scores = len(clean_rows), row_scores.mean(0)
        clean_value, corrupted_value = float(clean_rows.mean()), float(corrupted_rows.mean())
        if cell_means is None:
            cell_means = scores - corrupted_value
    normalised = normalise_scores(scores, clean_value, corrupted_value)
    return PatchResult(
        method=method, what=what, metric=metric, clean=clean, corrupted=corrupted, axes=list(axes),
        coords=[list(c) for c in coords], scores=scores.tolist(), baseline=corrupted_value, clean_value=clean_value,
        normalised=None if normalised is None else normalised.tolist(), str_tokens=list(str_tokens),
        top=hotspots(scores, corrupted_value, axes, coords, str_tokens, top_k, normalised, names, cells, cell_means,
                     corrupted_str_tokens),
        names=None if names is None else list(names), n_rows=n_rows, spread=cells,
        row_scores=row_scores.tolist() if per_row and row_scores is not None else None,
        corrupted_str_tokens=None if corrupted_str_tokens is None else list(corrupted_str_tokens))
