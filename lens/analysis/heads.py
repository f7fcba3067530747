"""Head detection (induction, previous-token, duplicate-token, or any pattern) and induction loss.

Induction and duplicate-token scores are read on repeated random tokens, [BOS] r r, where an
induction head at the second copy of a token attends to the token that followed its first copy;
previous-token scores on natural text. As TransformerLens's head detector does, attention to BOS
is excluded: each query's row is renormalised over the non-BOS keys before scoring.
"""

from __future__ import annotations

from typing import Literal

import torch

from lens.analysis.common import Result, prompt_tokens
from lens.data.stats import GridSpread

Kind = Literal["induction", "previous_token", "duplicate_token"]
NATURAL_TEXT = ("The quick brown fox jumps over the lazy dog. Mary had a little lamb whose fleece was white as "
                "snow, and everywhere that Mary went the lamb was sure to go. It was the best of times, it was "
                "the worst of times, it was the age of wisdom, it was the age of foolishness.")


class HeadScores(Result):
    kind: str
    scores: list[list[float]]  # [layer][head], each in [0, 1]
    top: list[tuple[int, int, float]]  # (layer, head, score), best first
    median: float
    on: str  # what the scores were computed on
    n_rows: int = 1  # over a prompt set: the rows the scores are means over
    spread: GridSpread | None = None  # over a set: per-head spread over rows

    def summary(self) -> str:
        best = ", ".join(f"L{l}H{h} {s:.2f}" for l, h, s in self.top[:8])
        return (f"{self.kind} scores on {self.on}: top heads {best}; median head {self.median:.3f}")


class InductionLoss(Result):
    seq_len: int
    batch: int
    per_position: list[float]  # mean loss predicting token t+1 from position t (t = 0 is the first random token)
    first_half: float  # mean loss over the first copy (predicting unseen random tokens)
    second_half: float  # mean loss over the second copy (an induction head can copy)

    def summary(self) -> str:
        return (f"induction loss on {self.batch} x 2 x {self.seq_len} repeated random tokens: first copy "
                f"{self.first_half:.2f}, second copy {self.second_half:.2f} nats/token "
                f"({self.first_half - self.second_half:.2f} lower on the repeat)")


def repeated_tokens(model, seq_len: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """[batch, offset + 2 * seq_len] tokens [BOS] r r (BOS when the model has one) and the offset."""
    generator = torch.Generator().manual_seed(seed)
    special = set(model.tokenizer.all_special_ids) if model.tokenizer is not None else set()
    allowed = torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])
    random = allowed[torch.randint(0, len(allowed), (batch, seq_len), generator=generator)]
    tokens = torch.cat([random, random], dim=1)
    if model.cfg.bos_token_id is not None:
        bos = torch.full((batch, 1), model.cfg.bos_token_id)
        return torch.cat([bos, tokens], dim=1).to(model.device), 1
    return tokens.to(model.device), 0


def _stripe_scores(patterns: torch.Tensor, offset: int, queries: slice, exclude_first_key: bool) -> torch.Tensor:
    """[n_layers, n_heads]: mean attention from each query in `queries` to key (query - offset)."""
    if exclude_first_key:  # drop BOS and renormalise the rest of each row
        patterns = patterns[..., 1:] / patterns[..., 1:].sum(-1, keepdim=True).clamp_min(1e-12)
        offset += 1  # key k is now column k - 1: one further left of its query
    stripe = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)  # [..., n_queries_with_that_key]
    # diagonal element j is query (j + offset); keep the requested queries
    start, stop = queries.start - offset, queries.stop - offset
    return stripe[..., start:stop].mean(dim=(1, -1))  # mean over batch and queries → [n_layers, n_heads]


@torch.no_grad()
def _patterns(model, tokens: torch.Tensor) -> torch.Tensor:
    """[n_layers, batch, n_heads, q, k] from one forward pass."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    return torch.stack([cache["pattern", i].float() for i in range(model.cfg.n_layers)])


def _result(kind: str, scores: torch.Tensor, on: str) -> HeadScores:
    flat = scores.flatten()
    order = flat.argsort(descending=True)[:10]
    H = scores.shape[1]
    return HeadScores(kind=kind, scores=scores.tolist(), median=flat.median().item(), on=on,
                      top=[(int(i) // H, int(i) % H, flat[i].item()) for i in order])


def detect_heads(model, kind: Kind | torch.Tensor = "induction", seq_len: int = 40, batch: int = 4,
                 prompt=None, seed: int = 0) -> HeadScores:
    """A [layer, head] score table for a kind of head, from one forward pass.

    kind: "induction" and "duplicate_token" run on repeated random tokens (batch x 2 x seq_len);
    "previous_token" on natural text (`prompt` or a built-in paragraph); a [pos, pos] tensor scores
    heads by how much of their attention (BOS excluded) falls where the tensor is 1, on `prompt`.
    A lens.data.PromptSet as `prompt`: scores per row, their mean and spread (lens.data.set_head_scores)."""
    from lens.data.prompt_set import PromptSet
    if isinstance(prompt, PromptSet):
        from lens.data.reading import set_head_scores
        return set_head_scores(model, prompt, kind)
    if isinstance(kind, torch.Tensor):
        if prompt is None:
            raise ValueError("a custom detection pattern needs the prompt it was written for")
        tokens = prompt_tokens(model, prompt)
        if kind.shape != (tokens.shape[1], tokens.shape[1]):
            raise ValueError(f"the detection pattern is {tuple(kind.shape)}; the prompt has {tokens.shape[1]} tokens")
        patterns = _patterns(model, tokens)[:, 0]  # [layer, head, q, k]
        bos = int(model.cfg.bos_token_id is not None and tokens[0, 0].item() == model.cfg.bos_token_id)
        patterns = patterns[..., bos:, bos:]
        scores = (patterns * kind[bos:, bos:].to(patterns)).sum((-1, -2)) / patterns.sum((-1, -2))
        return _result("custom pattern", scores, f"{prompt!r}")
    if kind == "previous_token":
        tokens = prompt_tokens(model, NATURAL_TEXT if prompt is None else prompt)
        bos = int(model.cfg.bos_token_id is not None and tokens[0, 0].item() == model.cfg.bos_token_id)
        n = tokens.shape[1]
        if n < 2 + bos:
            raise ValueError(f"previous-token scores need a prompt of at least {2 + bos} tokens "
                             f"(a query with a real token before it); this one has {n}")
        scores = _stripe_scores(_patterns(model, tokens), 1, slice(1 + bos, n), bool(bos))
        return _result(kind, scores, f"{n} tokens of natural text")
    if kind not in ("induction", "duplicate_token"):
        raise ValueError(f"kind must be 'induction', 'previous_token', 'duplicate_token' or a [pos, pos] "
                         f"tensor, not {kind!r}")
    tokens, bos = repeated_tokens(model, seq_len, batch, seed)
    second_copy = slice(bos + seq_len, bos + 2 * seq_len)
    offset = seq_len - 1 if kind == "induction" else seq_len
    scores = _stripe_scores(_patterns(model, tokens), offset, second_copy, bool(bos))
    return _result(kind, scores, f"{batch} x 2 x {seq_len} repeated random tokens")


@torch.no_grad()
def induction_loss(model, seq_len: int = 40, batch: int = 4, seed: int = 0) -> InductionLoss:
    """Per-position next-token loss on repeated random tokens: high on the first copy, low on the
    second when the model has induction heads."""
    tokens, bos = repeated_tokens(model, seq_len, batch, seed)
    losses = model(tokens, return_type="loss", loss_per_token=True)[:, bos:].mean(0)  # [2 * seq_len - 1]
    return InductionLoss(seq_len=seq_len, batch=batch, per_position=losses.tolist(),
                         first_half=losses[: seq_len - 1].mean().item(), second_half=losses[seq_len:].mean().item())
