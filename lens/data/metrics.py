"""Metrics over a prompt set's rows: each row read at its own position (its END by default) with its own
answer and baseline, one value per row.

A RowMetric is an ordinary lens metric (`metric(logits)` is the mean over rows, vectorised, restricted to
the positions it reads), and also `metric.rows(logits)` → [..., n_rows], which the patching engine keeps
(`per_row = True`), so every sweep over a set returns each row's value as well as the mean.

Besides the answer metrics (row_metric), two read the whole next-token distribution:
- kl_divergence: KL(clean ‖ run) of the next-token distributions at each row's position, in nats; 0 on
  the clean run itself (so its gradient there is 0: attribution at the clean run, EAP, sees nothing);
- span_loss: the mean next-token loss (nats) of each row's own clean tokens over a span of positions
  (e.g. the repeated half of an induction row); a SpanMetric, which reads several positions per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

MetricKind = Literal["logit_diff", "logit", "prob", "logprob", "kl", "loss"]
METRIC_KINDS = ("logit_diff", "logit", "prob", "logprob", "kl", "loss")
SpanSpec = str | tuple[int, int] | list[int] | None  # a named span, (first, last) predicting positions, or every one


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


def row_metric(ps, kind: MetricKind | None = None, position: str = "END", *, model=None,
               span: SpanSpec = None) -> RowMetric | SpanMetric:
    """A per-row metric of a prompt set at the named position: "logit_diff" (logit(answer) -
    logit(baseline); the default when the set has baselines), "logit" (the answer's logit; the default
    without), "prob" (its probability), "logprob", "kl" (kl_divergence: needs the model) or "loss"
    (span_loss over `span`, which only this kind reads)."""
    kind = kind or ("logit_diff" if ps.baseline_ids is not None else "logit")
    if kind not in METRIC_KINDS:
        raise ValueError(f"metric must be one of {', '.join(METRIC_KINDS)} (or a callable), not {kind!r}")
    if span is not None and kind != "loss":
        raise ValueError(f"span is the positions metric 'loss' averages over; metric {kind!r} reads one position "
                         f"per row ({position})")
    if kind == "loss":
        return span_loss(ps, span)
    if kind == "kl":
        if model is None:
            raise ValueError("metric 'kl' compares with the clean run's distribution: pass the model "
                             "(row_metric(ps, 'kl', model=model) or kl_divergence(model, ps))")
        return kl_divergence(model, ps, position)
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
    return RowMetric(name + _at(position), reduce, ps.positions[position])


def _at(position: str) -> str:
    return "" if position == "END" else f" @{position}"


def kl_divergence(model, ps, position: str = "END", reference: torch.Tensor | None = None) -> RowMetric:
    """KL(reference ‖ run) of the next-token distributions at each row's `position`, in nats (a row's
    value); the reference is the clean run (default) or given logits [n_rows, d_vocab]. Against the clean
    run it is 0 there and grows as a run's predictions move away, so lower is more clean-like: the
    corrupted run scores KL(clean ‖ corrupted) and faithfulness is 1 - KL(circuit) / KL(empty).
    `flat_at_clean` marks the clean reference: the metric's gradient at the clean run is 0."""
    if position not in ps.positions:
        raise ValueError(f"this set has no position {position!r}; it has {ps.position_names}")
    at = ps.positions[position]
    against_clean = reference is None
    if against_clean:  # right-padded rows run as alone; only each row's read position is unembedded
        keep, last = {}, f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        with torch.no_grad(), model.hooks(fwd_hooks=[(last, lambda x, point: keep.update(resid=x))]):
            model(ps.clean_tokens.to(model.device), return_type=None)
            resid = keep["resid"][torch.arange(len(ps)), at.to(keep["resid"].device)]  # [n_rows, d_model]
            reference = model.final_logits(resid[:, None])[:, 0]  # [n_rows, d_vocab]
    if tuple(reference.shape) != (len(ps), model.cfg.d_vocab):
        raise ValueError(f"reference logits have shape {tuple(reference.shape)}; this set needs "
                         f"{(len(ps), model.cfg.d_vocab)} (one distribution per row)")
    ref_logprobs = _wide(reference.detach()).log_softmax(-1)  # [n_rows, d_vocab]

    def reduce(x):  # [..., n_rows, d_vocab] → [..., n_rows]
        logprobs = _wide(x).log_softmax(-1)
        ref = ref_logprobs.to(logprobs.device, logprobs.dtype)
        return (ref.exp() * (ref - logprobs)).sum(-1)
    metric = RowMetric(("KL(clean || run)" if against_clean else "KL(reference || run)") + _at(position), reduce, at)
    metric.flat_at_clean = against_clean
    return metric


class SpanMetric:
    """A per-row metric over several positions per row: `reduce(logits, positions)` maps the logits at the
    absolute positions `positions` [k] ([..., n_rows, k, d_vocab]) to per-position values [..., n_rows, k],
    averaged over each row's positions (`weights` [n_rows, k], 1 where the row reads that position). The
    RowMetric contract: rows, __call__, restrict."""

    vectorised = True
    per_row = True

    def __init__(self, name: str, reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 weights: torch.Tensor, positions: torch.Tensor | None = None):
        self.name, self.reduce = name, reduce
        self.weights = weights.double()  # [n_rows, k]
        self.positions = torch.arange(weights.shape[1]) if positions is None else positions  # [k] absolute

    def rows(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [..., n_rows, k, d_vocab] → [..., n_rows]."""
        values = _wide(self.reduce(logits, self.positions))  # [..., n_rows, k]
        w = self.weights.to(values.device, values.dtype)
        return (values * w).sum(-1) / w.sum(-1)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.rows(logits).mean(-1)

    def restrict(self, n_pos: int) -> tuple[list[int], SpanMetric]:
        """The positions any row reads, and this metric on logits at those only."""
        if len(self.positions) != n_pos:
            raise ValueError(f"this metric was built for inputs of {len(self.positions)} positions, not {n_pos}")
        used = self.weights.bool().any(0).nonzero().flatten()
        return used.tolist(), SpanMetric(self.name, self.reduce, self.weights[:, used], self.positions[used])

    def __repr__(self) -> str:
        return self.name


def span_loss(ps, span: SpanSpec = None) -> SpanMetric:
    """The mean next-token loss (nats) of each row's own clean tokens, predicted from the positions of
    `span` in that row: None (every position with a next token), the name of one of the set's spans (its
    positions that have a next token), or (first, last) predicting positions, inclusive, a negative one
    counting from the row's end (-2: the row's second-to-last token, the last with a next token). Every
    run (clean, corrupted, patched) is scored against the clean tokens; lower is better."""
    n_rows, n_pos = ps.clean_tokens.shape
    index = torch.arange(n_pos)[None]  # [1, pos]
    has_next = index < (ps.lengths - 1)[:, None]  # [n_rows, pos]
    if span is None:
        weights, said = has_next, "each row"
    elif isinstance(span, str):
        weights, said = ps.span_mask(span) & has_next, span
    else:
        if len(span) != 2 or not all(isinstance(i, int) for i in span):
            raise ValueError(f"span is a name of the set's spans {ps.position_names} or [first, last] positions, "
                             f"not {span!r}")
        first, last = (torch.full((n_rows,), i) + (ps.lengths if i < 0 else 0) for i in span)
        bad = ((first < 0) | (first > last) | (last > ps.lengths - 2)).nonzero().flatten().tolist()
        if bad:
            row = bad[0]
            raise ValueError(f"span {list(span)} is positions {int(first[row])}..{int(last[row])} in row {row} of "
                             f"{int(ps.lengths[row])} tokens; the predicting positions are 0..{int(ps.lengths[row]) - 2} "
                             f"(first <= last; negative counts from the row's end) ({len(bad)} rows out)")
        weights, said = (index >= first[:, None]) & (index <= last[:, None]), f"positions {span[0]}..{span[1]}"
    empty = (~weights.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"span {span!r} holds no position with a next token in rows {empty[:10]}")
    targets = torch.cat([ps.clean_tokens[:, 1:], ps.clean_tokens[:, -1:]], 1)  # [n_rows, pos] the next token

    def reduce(x, positions):  # x [..., n_rows, k, d_vocab] at these positions → [..., n_rows, k]
        t = targets[:, positions].to(x.device).expand(*x.shape[:-1])[..., None]
        return -_wide(x).log_softmax(-1).gather(-1, t)[..., 0]
    return SpanMetric(f"next-token loss over {said}", reduce, weights)


def as_row_metric(ps, metric) -> RowMetric:
    """A metric given for a set: None (the default kind), a kind name, or a RowMetric."""
    if metric is None or isinstance(metric, str):
        return row_metric(ps, metric)
    if getattr(metric, "per_row", False):
        return metric
    raise TypeError("over a prompt set the metric is a kind ('logit_diff', 'logit', 'prob', 'logprob', 'loss') or a "
                    "lens.data.row_metric(...): it must give one value per row, read at each row's own position")
