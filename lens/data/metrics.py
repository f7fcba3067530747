"""Metrics over a prompt set's rows: each row read at its own position (its END by default) with its own
answer and baseline, one value per row.

A RowMetric is an ordinary lens metric (`metric(logits)` is the mean over rows, vectorised, restricted to
the positions it reads), and also `metric.rows(logits)` → [..., n_rows], which the patching engine keeps
(`per_row = True`), so every sweep over a set returns each row's value as well as the mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

MetricKind = Literal["logit_diff", "logit", "prob", "logprob"]
METRIC_KINDS = ("logit_diff", "logit", "prob", "logprob")


class RowMetric:
    """`reduce` maps the logits at each row's position [..., n_rows, d_vocab] to [..., n_rows]."""

    vectorised = True
    per_row = True

    def __init__(self, name: str, reduce: Callable[[torch.Tensor], torch.Tensor], positions: torch.Tensor):
        self.name, self.reduce = name, reduce
        self.positions = torch.as_tensor(positions, dtype=torch.long)  # [n_rows] the position read in each row

    def rows(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [..., n_rows, pos, d_vocab] → [..., n_rows]."""
        index = self.positions.to(logits.device).view(-1, 1, 1).expand(*logits.shape[:-2], 1, logits.shape[-1])
        return _wide(self.reduce(logits.gather(-2, index)[..., 0, :]))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.rows(logits).mean(-1)

    def restrict(self, n_pos: int) -> tuple[list[int], RowMetric]:
        """The positions any row reads, and this metric on logits at those only."""
        used = self.positions.unique(sorted=True)
        if int(used.max()) >= n_pos:
            raise ValueError(f"a row metric reads position {int(used.max())} of an input of {n_pos} tokens")
        return used.tolist(), RowMetric(self.name, self.reduce, torch.searchsorted(used, self.positions))

    def __repr__(self) -> str:
        return self.name


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _pick(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """values [..., n_rows, d_vocab] at one id per row → [..., n_rows]."""
    ids = ids.to(values.device).view(-1, 1).expand(*values.shape[:-1], 1)
    return values.gather(-1, ids)[..., 0]


def row_metric(ps, kind: MetricKind | None = None, position: str = "END") -> RowMetric:
    """A per-row metric of a prompt set at the named position: "logit_diff" (logit(answer) -
    logit(baseline); the default when the set has baselines), "logit" (the answer's logit; the default
    without), "prob" (its probability) or "logprob"."""
    kind = kind or ("logit_diff" if ps.baseline_ids is not None else "logit")
    if kind not in METRIC_KINDS:
        raise ValueError(f"metric must be one of {', '.join(METRIC_KINDS)} (or a callable), not {kind!r}")
    if kind == "logit_diff" and ps.baseline_ids is None:
        raise ValueError("metric 'logit_diff' needs a baseline per row; this set has none (use 'logit' or 'prob')")
    answer, baseline = ps.answer_ids, ps.baseline_ids
    reduce = {
        "logit_diff": lambda x: _pick(x, answer) - _pick(x, baseline),
        "logit": lambda x: _pick(x, answer),
        "prob": lambda x: _pick(_wide(x).softmax(-1), answer),
        "logprob": lambda x: _pick(_wide(x).log_softmax(-1), answer),
    }[kind]
    name = {"logit_diff": "logit(answer) - logit(baseline)", "logit": "logit(answer)", "prob": "p(answer)",
            "logprob": "log p(answer)"}[kind]
    return RowMetric(name + ("" if position == "END" else f" @{position}"), reduce, ps.positions[position])


def as_row_metric(ps, metric) -> RowMetric:
    """A metric given for a set: None (the default kind), a kind name, or a RowMetric."""
    if metric is None or isinstance(metric, str):
        return row_metric(ps, metric)
    if getattr(metric, "per_row", False):
        return metric
    raise TypeError("over a prompt set the metric is a kind ('logit_diff', 'logit', 'prob', 'logprob') or a "
                    "lens.data.row_metric(...): it must give one value per row, read at each row's own position")
