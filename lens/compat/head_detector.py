"""TransformerLens's head detector, `lens.head_detector.detect_head`: how much each head's attention
pattern on one prompt matches a detection pattern ([pos, pos], lower triangular).

lens.analysis.heads has lens's own scores (on repeated random tokens, BOS renormalised away); this is
TransformerLens's function with its arguments and values, for code that calls it.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from lens.compat.utils import is_lower_triangular, is_square
from lens.errors import InvalidArgumentError

HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
ErrorMeasure = Literal["abs", "mul"]
HEAD_NAMES = list(get_args(HeadName))


def get_previous_token_head_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """[pos, pos]: 1 where a query attends to the token just before it."""
    n = tokens.shape[-1]
    return torch.diag(torch.ones(n - 1), -1)


def get_duplicate_token_head_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """[pos, pos]: 1 where an earlier position holds the query's token."""
    seq = tokens.reshape(-1)
    same = (seq[:, None] == seq[None, :]).float()
    return torch.tril(same, diagonal=-1)


def get_induction_head_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """[pos, pos]: 1 where the key position follows an earlier copy of the query's token."""
    duplicate = get_duplicate_token_head_detection_pattern(tokens)
    shifted = torch.zeros_like(duplicate)
    shifted[:, 1:] = duplicate[:, :-1]
    return torch.tril(shifted)


PATTERNS = {"previous_token_head": get_previous_token_head_detection_pattern,
            "duplicate_token_head": get_duplicate_token_head_detection_pattern,
            "induction_head": get_induction_head_detection_pattern}


def get_supported_heads() -> None:
    print(f"Supported heads: {tuple(HEAD_NAMES)}")


def compute_head_attention_similarity_score(attention_pattern: torch.Tensor, detection_pattern: torch.Tensor, *,
                                            exclude_bos: bool, exclude_current_token: bool,
                                            error_measure: ErrorMeasure) -> float:
    """'mul': the share of the head's attention that falls where the detection pattern is 1;
    'abs': 1 - the summed absolute difference per query row, rounded to 3 places."""
    if not is_square(attention_pattern):
        raise InvalidArgumentError(f"the attention pattern must be square, not {tuple(attention_pattern.shape)}")
    if error_measure == "mul":
        pattern = attention_pattern.clone()
        if exclude_bos:
            pattern[:, 0] = 0
        if exclude_current_token:
            pattern.fill_diagonal_(0)
        return ((pattern * detection_pattern).sum() / pattern.sum()).item()
    diff = (attention_pattern - detection_pattern).abs()
    if exclude_bos:
        diff[:, 0] = 0
    if exclude_current_token:
        diff.fill_diagonal_(0)
    return 1 - round((diff.mean() * len(diff)).item(), 3)


def detect_head(model, seq: str | list[str], detection_pattern: torch.Tensor | HeadName, heads=None, cache=None, *,
                exclude_bos: bool = False, exclude_current_token: bool = False,
                error_measure: ErrorMeasure = "mul") -> torch.Tensor:
    """[n_layers, n_heads] scores (-1 for heads not asked for). seq: a prompt, or a list of prompts whose
    scores are averaged (named patterns only). heads: [(layer, head), ...] or {layer: [head, ...]}."""
    if error_measure not in get_args(ErrorMeasure):
        raise InvalidArgumentError(f"error_measure must be 'abs' or 'mul', not {error_measure!r}")
    if isinstance(detection_pattern, str):
        if detection_pattern not in PATTERNS:
            raise InvalidArgumentError(f"detection_pattern must be a tensor or one of {HEAD_NAMES}; got {detection_pattern!r}")
        if isinstance(seq, list):
            if cache is not None:
                raise ValueError("one cache holds one prompt: pass prompts one at a time with a cache, or no cache")
            return torch.stack([detect_head(model, s, detection_pattern, heads, exclude_bos=exclude_bos,
                                            exclude_current_token=exclude_current_token,
                                            error_measure=error_measure) for s in seq]).mean(0)
    tokens = seq if isinstance(seq, torch.Tensor) else model.to_tokens(seq)  # token ids [1, pos] pass as they are
    n = tokens.shape[-1]
    if not 1 < n < model.cfg.n_ctx:
        raise InvalidArgumentError(f"the sequence must have 2 to {model.cfg.n_ctx - 1} tokens (the context window); it has {n}")
    if isinstance(detection_pattern, str):
        detection_pattern = PATTERNS[detection_pattern](tokens.cpu())
    detection_pattern = detection_pattern.to(model.device)
    if not (is_lower_triangular(detection_pattern) and detection_pattern.shape[0] == n):
        raise InvalidArgumentError(f"the detection pattern must be lower triangular [{n}, {n}] (the sequence length); got "
                         f"{tuple(detection_pattern.shape)}")
    if cache is None:
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"),
                                        remove_batch_dim=True)
    if heads is None:
        chosen = {layer: list(range(model.cfg.n_heads)) for layer in range(model.cfg.n_layers)}
    elif isinstance(heads, dict):
        chosen = heads
    else:
        chosen = {}
        for layer, head in heads:
            chosen.setdefault(layer, []).append(head)
    scores = -torch.ones(model.cfg.n_layers, model.cfg.n_heads, dtype=model.dtype)
    for layer, layer_heads in chosen.items():
        pattern = cache["pattern", layer]
        pattern = pattern[0] if pattern.dim() == 4 else pattern  # [n_heads, pos, pos]
        for head in layer_heads:
            scores[layer, head] = compute_head_attention_similarity_score(
                pattern[head], detection_pattern, exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token, error_measure=error_measure)
    return scores
