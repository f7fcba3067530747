"""Tokenization: strings ↔ token tensors, with BOS and padding handled explicitly.

BOS: by default lens prepends BOS exactly when the model's own HF tokenizer does
(`cfg.default_prepend_bos`: Gemma and Llama 2/3 yes; GPT-2, Pythia, SmolLM2 and Qwen2 no),
so a prompt is the sequence the model was run on upstream. Pass `prepend_bos=True`
to get TransformerLens's habit of always prepending it.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from lens.errors import TokenizationError

PaddingSide = Literal["left", "right"]


def require_tokenizer(tokenizer):
    if tokenizer is None:
        raise TokenizationError(
            "this model has no tokenizer (it was built from a config or a folder without tokenizer files); "
            "pass token ids as a LongTensor [batch, pos] instead of strings")
    return tokenizer


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` alone, without any special token the tokenizer would add."""
    return require_tokenizer(tokenizer)(text, add_special_tokens=False)["input_ids"]


def tokenize(tokenizer, cfg, text: str | Sequence[str], prepend_bos: bool | None = None,
             padding_side: PaddingSide | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [batch, pos] and attention mask [batch, pos] (1 = real token) for a string or a list."""
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TokenizationError("input must be a string, a non-empty list of strings, or a token tensor")
    prepend_bos = cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    padding_side = padding_side or "right"
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    if prepend_bos and cfg.bos_token_id is None:
        raise TokenizationError("prepend_bos=True but this model's tokenizer has no BOS token")
    rows = [([cfg.bos_token_id] if prepend_bos else []) + encode(tokenizer, t) for t in texts]
    if any(not row for row in rows):
        raise TokenizationError("an empty string with prepend_bos=False has no tokens to run")
    width = max(map(len, rows))
    pad_id = next(i for i in (cfg.pad_token_id, cfg.eos_token_id, 0) if i is not None)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        tokens[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return tokens, mask


def to_single_token(tokenizer, text: str) -> int:
    ids = encode(tokenizer, text)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise TokenizationError(
            f"{text!r} is {len(ids)} tokens, not one: {pieces}. Use a string that is a single token "
            f"(often with a leading space, e.g. ' Paris'), or compare the first token only.")
    return ids[0]


def str_tokens(tokenizer, tokens: torch.Tensor) -> list[str]:
    """Each token of a 1-d tensor decoded on its own."""
    return [require_tokenizer(tokenizer).decode([int(t)]) for t in tokens]


def detects_bos(tokenizer) -> bool:
    """Whether the HF tokenizer prepends BOS itself (what `default_prepend_bos` follows)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
