"""Figures over a prompt set: mean, spread and sign agreement of per-row values.

`Spread` holds one figure: its mean over the rows, the standard deviation (n - 1 in the denominator),
a 95% confidence interval of the mean (Student's t, mean ± t · std / √n), the number of rows and how
many of them are positive / negative, and, on request, the per-row values. `grid_spread` gives the same
for a grid of figures ([n_rows, ...] values → one Spread-like record per cell, as nested lists).
"""

from __future__ import annotations

import math

import torch

from lens.analysis.common import Result

Z_975 = 1.959963984540054  # the normal distribution's 97.5% quantile
T_975_SMALL = (float("nan"), 12.706204736174694, 4.302652729749462, 3.182446305283708, 2.776445105197793,
               2.570581835636314, 2.446911851144978, 2.364624251592784)  # df 0..7


def t_975(df: int) -> float:
    """Student's t 97.5% quantile (two-sided 95%): tabulated for df 1..7 (scipy.stats.t.ppf), else the
    Cornish-Fisher expansion around the normal quantile (error < 5e-4 from df 8 on)."""
    if df <= 0:
        return float("nan")
    if df < len(T_975_SMALL):
        return T_975_SMALL[df]
    z = Z_975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


class Spread(Result):
    """One figure over a set's rows."""

    mean: float
    std: float  # over rows (0 for one row)
    ci95: tuple[float, float]  # 95% interval of the mean (the mean itself for one row)
    n: int
    n_positive: int
    n_negative: int
    values: list[float] | None = None  # per row, on request

    @property
    def agreement(self) -> int:
        """How many rows share the mean's sign."""
        return self.n_positive if self.mean >= 0 else self.n_negative

    def text(self, percent: bool = False) -> str:
        """"0.52 ± 0.06 (95% CI 0.40..0.64), positive on 48/50 prompts"; percent: "52% ± 6% ..."."""
        def fmt(x: float) -> str:
            return f"{100 * x:.0f}%" if percent else f"{x:+.3g}"
        half = (self.ci95[1] - self.ci95[0]) / 2
        sign = "positive" if self.mean >= 0 else "negative"
        if self.n == 1:
            return fmt(self.mean) + " (one prompt)"
        return (f"{fmt(self.mean)} ± {fmt(half).lstrip('+')} (95% CI {fmt(self.ci95[0])}..{fmt(self.ci95[1])}, "
                f"std {fmt(self.std).lstrip('+')}), {sign} on {self.agreement}/{self.n} prompts")

    def summary(self) -> str:
        return self.text()


def spread(values, keep_values: bool = False) -> Spread:
    """The Spread of per-row values (a 1-d tensor or list)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("no rows to aggregate")
    mean = values.mean().item()
    std = values.std().item() if n > 1 else 0.0
    half = t_975(n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    return Spread(mean=mean, std=std, ci95=(mean - half, mean + half), n=n, n_positive=int((values > 0).sum()),
                  n_negative=int((values < 0).sum()), values=values.tolist() if keep_values else None)


class GridSpread(Result):
    """Per-cell spread of a grid of figures over rows: each field is nested lists in the grid's shape."""

    n: int
    std: list | float
    ci95_low: list | float
    ci95_high: list | float
    n_positive: list | int  # rows whose value is > 0 (for patching: the patch moves the metric towards clean)
    n_negative: list | int
    per_row: list | None = None  # [n_rows, *grid] on request

    def cell(self, index: tuple[int, ...], mean: float) -> Spread:
        def at(x):
            for i in index:
                x = x[i]
            return x
        return Spread(mean=mean, std=at(self.std), ci95=(at(self.ci95_low), at(self.ci95_high)), n=self.n,
                      n_positive=at(self.n_positive), n_negative=at(self.n_negative))

    def summary(self) -> str:
        return f"spread over {self.n} prompts"


def grid_spread(values: torch.Tensor, keep_rows: bool = False) -> tuple[torch.Tensor, GridSpread]:
    """values [n_rows, *grid] → (mean [*grid], its GridSpread)."""
    values = values.double()
    n = values.shape[0]
    mean = values.mean(0)
    std = values.std(0) if n > 1 else torch.zeros_like(mean)
    half = t_975(n - 1) * std / math.sqrt(n) if n > 1 else torch.zeros_like(mean)
    return mean, GridSpread(n=n, std=std.tolist(), ci95_low=(mean - half).tolist(), ci95_high=(mean + half).tolist(),
                            n_positive=(values > 0).sum(0).tolist(), n_negative=(values < 0).sum(0).tolist(),
                            per_row=values.tolist() if keep_rows else None)
