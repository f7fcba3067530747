"""What the analyses share: result base class, prompt handling, token formatting."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from lens.errors import TokenizationError


class Result(BaseModel):
    """A typed analysis result: JSON-ready fields and a one-screen `summary()`."""

    model_config = ConfigDict(extra="forbid")

    def summary(self) -> str:  # pragma: no cover - every result overrides it
        raise NotImplementedError

    def __str__(self) -> str:
        return self.summary()


def prompt_tokens(model, prompt) -> torch.Tensor:
    """[1, pos] tokens of one prompt (a string or token ids)."""
    tokens = model.to_tokens(prompt, truncate=False) if isinstance(prompt, str) else torch.as_tensor(prompt)
    tokens = tokens[None] if tokens.dim() == 1 else tokens
    if tokens.shape[0] != 1:
        raise ValueError(f"this analysis takes one prompt, got a batch of {tokens.shape[0]}")
    return tokens.to(model.device)


def token_id(model, token: str | int) -> int:
    """A token given as a string (must be exactly one token) or an id."""
    if isinstance(token, str):
        return model.to_single_token(token)
    if not 0 <= int(token) < model.cfg.d_vocab:
        raise ValueError(f"token id {token} is outside the vocabulary (0..{model.cfg.d_vocab - 1})")
    return int(token)


def token_str(model, token: int) -> str:
    return model.to_string([token]) if model.tokenizer is not None else f"<{token}>"


def str_tokens(model, tokens: torch.Tensor) -> list[str]:
    return model.to_str_tokens(tokens[0]) if model.tokenizer is not None else [f"<{int(t)}>" for t in tokens[0]]


def prompt_text(model, prompt, tokens: torch.Tensor) -> str:
    """The prompt as text: as given, decoded, or the ids when there is no tokenizer."""
    if isinstance(prompt, str):
        return prompt
    return model.to_string(tokens[0]) if model.tokenizer is not None else str(tokens[0].tolist())


def in_range(index: int, size: int, what: str, of: str) -> int:
    """index as 0..size-1 (negative ones count from the end); out of range: a ValueError naming the range,
    e.g. in_range(40, 30, "layer", "a model of 30 layers")."""
    if not -size <= index < size:
        raise ValueError(f"{what} {index} is out of range for {of}: valid values are 0..{size - 1} "
                         f"(or -{size}..-1 from the end)")
    return index % size


def all_in_range(indices, size: int, what: str, of: str) -> list[int]:
    """None → all of 0..size-1; else each index checked by in_range. An empty list is an error, and so is
    an index given twice (also as -1 and size - 1): it would run the same work twice."""
    if indices is None:
        return list(range(size))
    if not len(indices):
        raise ValueError(f"no {what}s given: give at least one, or None for all {size}")
    checked = [in_range(i, size, what, of) for i in indices]
    twice = sorted({i for i in checked if checked.count(i) > 1})
    if twice:
        raise ValueError(f"{what}s {twice} are given more than once (negative indices count from the end); give "
                         f"each {what} once")
    return checked


def resolve_pos(pos: int, n: int) -> int:
    return in_range(pos, n, "position", f"a prompt of {n} tokens")


@torch.no_grad()
def spacing_warnings(model, prompt, answers, pos: int = -1) -> list[str]:
    """A warning for each answer typed without its leading space ('Mary') whose spaced form (' Mary') is one
    token that the model ranks higher as the next token at `pos` of `prompt`: mid-sentence words are
    usually spaced tokens, and the unspaced one is another token that scores something else. One forward,
    only when some answer is unspaced and its spaced form is a single token."""
    pairs = []
    for answer in dict.fromkeys(a for a in answers if isinstance(a, str) and a and not a[0].isspace()):
        try:
            pairs.append((answer, model.to_single_token(answer), model.to_single_token(" " + answer)))
        except TokenizationError:  # either form is not one token: nothing to compare
            continue
    if not pairs:
        return []
    tokens = prompt_tokens(model, prompt)
    logits = model(tokens)[0, resolve_pos(pos, tokens.shape[1])].float()
    warnings = []
    for answer, plain, spaced in pairs:
        plain_rank, spaced_rank = (int((logits > logits[i]).sum()) for i in (plain, spaced))
        if spaced_rank < plain_rank:
            warnings.append(f"the answer {answer!r} has no leading space; {' ' + answer!r} is one token the model "
                            f"ranks higher here (rank {spaced_rank} vs {plain_rank}, 0 = top): did you mean it?")
    return warnings
