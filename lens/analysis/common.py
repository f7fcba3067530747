"""What the analyses share: result base class, prompt handling, token formatting."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    """A typed analysis result: JSON-ready fields and a one-screen `summary()`."""

    model_config = ConfigDict(extra="forbid")

    def summary(self) -> str:  # pragma: no cover - every result overrides it
        raise NotImplementedError

    def __str__(self) -> str:
        return self.summary()


def prompt_tokens(model, prompt) -> torch.Tensor:
    """[1, pos] tokens of one prompt (a string or token ids)."""
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else torch.as_tensor(prompt)
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


def resolve_pos(pos: int, n: int) -> int:
    resolved = pos + n if pos < 0 else pos
    if not 0 <= resolved < n:
        raise ValueError(f"position {pos} is outside the prompt's {n} tokens")
    return resolved
