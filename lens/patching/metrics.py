"""Patching metrics: plain functions of the logits, and the contract the patching engine calls them with.

A metric is any callable `metric(logits) -> scalar` with logits [batch, pos, d_vocab]
(TransformerLens's `patching_metric`); for a batch of prompts it reduces over the batch
itself (the built-ins take the mean). The engine runs many patched copies of the batch
in one forward and calls such a metric once per copy, on that copy's rows.

Two opt-in speed-ups, both used by the built-in metrics here:
- `metric.vectorised = True`: the metric also takes logits [n_copies, batch, pos, d_vocab]
  and returns [n_copies], so the engine calls it once per forward (or pass
  `vectorised_metric=True` to the patching functions).
- `metric.restrict(n_pos) -> (positions, metric_on_those)`: the metric reads only the
  logits at these absolute positions, and `metric_on_those(logits[..., positions, :])`
  equals `metric(logits)`. The engine then unembeds only those positions, which on a
  large vocabulary is most of a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lens.analysis.common import all_in_range

Logits = torch.Tensor  # [..., batch, pos, d_vocab]
Positions = int | Sequence[int] | None  # None = every position


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in fp32 for softmax and sums; fp32 and fp64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class Metric:
    """A vectorised metric over the logits at some positions: `reduce` maps the selected logits
    [..., batch, k, d_vocab] to [..., batch]; the metric is its mean over the batch."""

    vectorised = True

    def __init__(self, name: str, reduce: Callable[[Logits], torch.Tensor], positions: Positions = -1):
        self.name = name
        self.reduce = reduce
        self.positions = [positions] if isinstance(positions, int) else None if positions is None else list(positions)

    def __call__(self, logits: Logits) -> torch.Tensor:
        selected = logits if self.positions is None else logits[..., self.read(logits.shape[-2]), :]
        return _wide(self.reduce(selected)).mean(-1)

    def read(self, n_pos: int) -> list[int]:
        """The positions this metric reads in an n_pos-token input (checked, non-negative)."""
        return all_in_range(self.positions, n_pos, "position", f"a prompt of {n_pos} tokens")

    def restrict(self, n_pos: int) -> tuple[list[int], Metric]:
        """The positions read in an n_pos-token input, and this metric on logits at those only."""
        return self.read(n_pos), Metric(self.name, self.reduce, positions=None)

    def __repr__(self) -> str:
        return self.name


def _token_ids(model, tokens) -> torch.Tensor:
    """One token (str or id) or one per batch row → a LongTensor [] or [batch]."""
    def one(token) -> int:
        if isinstance(token, str):
            if model is None:
                raise ValueError(f"the token {token!r} is a string: pass the model too, or its id")
            return model.to_single_token(token)
        return int(token)
    if isinstance(tokens, (str, int)) or (isinstance(tokens, torch.Tensor) and tokens.dim() == 0):
        return torch.tensor(one(tokens))
    return torch.tensor([one(t) for t in tokens])


def _describe(tokens) -> str:
    return repr(tokens) if isinstance(tokens, (str, int)) else f"{len(tokens)} tokens"


def _logit_of(logits: Logits, ids: torch.Tensor) -> torch.Tensor:
    """logits [..., batch, k, d_vocab] at ids ([] or [batch]) → [..., batch], mean over the k positions."""
    ids = ids.to(logits.device)
    if ids.dim() == 0:
        return logits[..., ids].mean(-1)
    index = ids.view(-1, 1, 1).expand(*logits.shape[:-1], 1)
    return logits.gather(-1, index)[..., 0].mean(-1)


def logit_diff(model, answer, wrong=None, pos: Positions = -1) -> Metric:
    """logit(answer) - logit(wrong) at `pos` (mean over the batch; over positions if several).
    answer / wrong: a token string (one token), an id, or one per batch row. Without `wrong`,
    the answer's logit alone."""
    answer_ids = _token_ids(model, answer)
    wrong_ids = None if wrong is None else _token_ids(model, wrong)

    def reduce(logits):
        value = _logit_of(logits, answer_ids)
        return value if wrong_ids is None else value - _logit_of(logits, wrong_ids)
    name = f"logit({_describe(answer)})" + ("" if wrong is None else f" - logit({_describe(wrong)})")
    return Metric(name, reduce, pos)


def probability(model, answer, pos: Positions = -1) -> Metric:
    """The softmax probability of `answer` at `pos` (mean over the batch)."""
    answer_ids = _token_ids(model, answer)
    return Metric(f"p({_describe(answer)})", lambda logits: _logit_of(_wide(logits).softmax(-1), answer_ids), pos)


def next_token_loss(model, prompt, positions: Positions = None) -> Metric:
    """The mean next-token loss (nats) of `prompt`'s own tokens, predicted from `positions` (default: every
    position with a next token), mean over positions and the batch. Lower is better, so patching
    restores it downwards and ablating a component it needs raises it: e.g. ablating induction heads on a
    repeated sequence, scored over the repeat. prompt: a string, strings of one token count, or ids;
    patching scores every run (clean, corrupted, patched) against the tokens given here."""
    from lens.patching.inputs import to_tokens
    tokens, mask = to_tokens(model, prompt)  # [batch, pos]
    if mask is not None:
        raise ValueError("next_token_loss needs prompts of one token count (their tokens are the targets)")
    n_pos = tokens.shape[1]
    if n_pos < 2:
        raise ValueError("next-token loss needs a prompt of at least 2 tokens")
    predicting = all_in_range(list(range(n_pos - 1)) if positions is None else
                              [positions] if isinstance(positions, int) else positions,
                              n_pos, "position", f"a prompt of {n_pos} tokens")
    if n_pos - 1 in predicting:
        raise ValueError(f"position {n_pos - 1} is the last token: nothing follows it to score; the loss "
                         f"positions are 0..{n_pos - 2}")
    targets = tokens[:, [p + 1 for p in predicting]]  # [batch, k]

    def reduce(logits):  # [..., batch, k, d_vocab] → [..., batch]
        logprobs = _wide(logits).log_softmax(-1)
        index = targets.to(logits.device).expand(*logits.shape[:-1])[..., None]
        return -logprobs.gather(-1, index)[..., 0].mean(-1)
    span = f"{predicting[0]}..{predicting[-1]}" if predicting == list(range(predicting[0], predicting[-1] + 1)) \
        else f"{len(predicting)} positions"
    return Metric(f"next-token loss over positions {span}", reduce, predicting)


def kl_to_clean(clean_logits: torch.Tensor, pos: Positions = -1) -> Metric:
    """KL(clean ‖ patched) of the next-token distributions at `pos` (None = every position),
    mean over positions and the batch; 0 when the patched run predicts exactly as the clean one.
    clean_logits [batch, pos, d_vocab] (or [pos, d_vocab])."""
    clean_logits = clean_logits[None] if clean_logits.dim() == 2 else clean_logits
    n_pos = clean_logits.shape[1]
    positions = all_in_range([pos] if isinstance(pos, int) else pos, n_pos, "position", f"a prompt of {n_pos} tokens")
    clean_logprobs = _wide(clean_logits[:, positions]).log_softmax(-1)  # [batch, k, d_vocab]

    def reduce(logits):
        logprobs = _wide(logits).log_softmax(-1)
        return (clean_logprobs.exp() * (clean_logprobs - logprobs)).sum(-1).mean(-1)
    return Metric("KL(clean || patched)", reduce, positions)


class Normalised:
    """(metric - corrupted) / (clean - corrupted): 0 = the corrupted run, 1 = the clean run
    (TransformerLens's normalised patching metric). Wraps any metric, keeping its speed-ups."""

    def __init__(self, metric: Callable[[Logits], torch.Tensor], clean_value: float, corrupted_value: float):
        if abs(clean_value - corrupted_value) < 1e-12:
            raise ValueError(f"the metric is {clean_value:.6g} on both the clean and the corrupted input, so it "
                             f"cannot be normalised; pick prompts (or a metric) that tell them apart")
        self.metric, self.clean_value, self.corrupted_value = metric, float(clean_value), float(corrupted_value)
        self.vectorised = getattr(metric, "vectorised", False)
        self.name = f"normalised {getattr(metric, 'name', getattr(metric, '__name__', 'metric'))}"

    def __call__(self, logits: Logits) -> torch.Tensor:
        return (self.metric(logits) - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def __getattr__(self, name):
        if name == "restrict" and hasattr(self.metric, "restrict"):
            def restrict(n_pos: int):
                positions, inner = self.metric.restrict(n_pos)
                return positions, Normalised(inner, self.clean_value, self.corrupted_value)
            return restrict
        raise AttributeError(name)

    def __repr__(self) -> str:
        return self.name


def normalise(metric: Callable[[Logits], torch.Tensor], clean_logits: torch.Tensor,
              corrupted_logits: torch.Tensor) -> Normalised:
    """A metric rescaled so that the corrupted logits score 0 and the clean logits score 1."""
    with torch.no_grad():
        return Normalised(metric, float(metric(clean_logits)), float(metric(corrupted_logits)))


def metric_name(metric) -> str:
    return str(getattr(metric, "name", None) or getattr(metric, "__name__", None) or "metric")
