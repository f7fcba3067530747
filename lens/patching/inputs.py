"""Prompts to token tensors for the intervention functions, and the checks a clean/corrupted pair must pass."""

from __future__ import annotations

import torch

from lens import tokens as tok
from lens.analysis.common import prompt_text


def to_tokens(model, prompt) -> tuple[torch.Tensor, torch.Tensor | None]:
    """tokens [batch, pos] and the attention mask (None when nothing is padded) of a string, a list
    of strings (padded on the right) or token ids."""
    if isinstance(prompt, torch.Tensor):
        tokens, mask = (prompt[None] if prompt.dim() == 1 else prompt), None
    elif isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt)):
        tokens, mask = tok.tokenize(model.tokenizer, model.cfg, prompt)
        mask = None if bool(mask.all()) else mask.to(model.device)
    else:
        tokens, mask = torch.as_tensor(prompt), None
        tokens = tokens[None] if tokens.dim() == 1 else tokens
    if tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"a prompt is a string, a list of strings or token ids; got a tensor of {tokens.dtype}")
    return tokens.to(model.device), mask


def pair_tokens(model, clean, corrupted) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(clean tokens, corrupted tokens, attention mask) of a clean/corrupted pair, which patching
    matches position by position, so both must have the same batch size and token count."""
    clean_tokens, clean_mask = to_tokens(model, clean)
    corrupted_tokens, corrupted_mask = to_tokens(model, corrupted)
    if clean_tokens.shape[-1] != corrupted_tokens.shape[-1]:
        raise ValueError(
            f"the clean prompt has {clean_tokens.shape[-1]} tokens and the corrupted prompt has "
            f"{corrupted_tokens.shape[-1]}; patching pairs them position by position, so they must have the same "
            f"length (check with model.to_str_tokens; e.g. swap names that are single tokens)")
    if clean_tokens.shape[0] != corrupted_tokens.shape[0]:
        raise ValueError(f"the clean input is a batch of {clean_tokens.shape[0]} and the corrupted input a batch "
                         f"of {corrupted_tokens.shape[0]}; give one corrupted prompt per clean prompt")
    if (clean_mask is None) != (corrupted_mask is None) or (
            clean_mask is not None and not torch.equal(clean_mask, corrupted_mask)):
        raise ValueError("the clean and corrupted prompts are padded differently; each pair must have the same "
                         "token count")
    same = (clean_tokens == corrupted_tokens).all(-1).nonzero()[:, 0].tolist()  # rows with nothing corrupted
    if same:
        which = "the clean and corrupted prompts are" if clean_tokens.shape[0] == 1 else \
            f"rows {same[:10]} have clean and corrupted prompts that are"
        raise ValueError(f"{which} identical, so there is no difference to patch; change the key information "
                         f"in the corrupted prompt (e.g. swap the names)")
    return clean_tokens, corrupted_tokens, corrupted_mask


def check_length(activation: torch.Tensor, pos_axis: int | None, n_pos: int, name: str) -> None:
    """A cached clean activation must cover as many positions as the corrupted tokens."""
    if pos_axis is not None and activation.shape[pos_axis] != n_pos:
        raise ValueError(f"the clean cache's {name} covers {activation.shape[pos_axis]} positions and the "
                         f"corrupted tokens have {n_pos}; clean and corrupted prompts must have the same length")


def pair_or_set(model, clean, corrupted, metric):
    """(clean tokens, corrupted tokens, attention mask, metric, prompt set or None, (clean, corrupted) texts)
    of a clean/corrupted pair with its metric, or of a lens.data.PromptSet given as `clean` (its padded
    batches, unmasked since the padding sits on the right, and its row metric: a kind or a RowMetric)."""
    from lens.data.metrics import as_row_metric
    from lens.data.prompt_set import PromptSet
    if isinstance(clean, PromptSet):
        ps = clean
        if ps.corruption == "noise":
            raise ValueError("this set corrupts by noise, so it has no corrupted prompts to patch from; use "
                             "lens.data.causal_trace, or a set with corrupted prompts")
        return (ps.clean_tokens.to(model.device), ps.corrupted_tokens.to(model.device), None,
                as_row_metric(ps, metric), ps, set_texts(ps))
    if corrupted is None or metric is None:
        raise ValueError("give clean and corrupted prompts and a metric, or a lens.data.PromptSet as clean")
    clean_tokens, corrupted_tokens, mask = pair_tokens(model, clean, corrupted)
    texts = (prompt_text(model, clean, clean_tokens[:1]), prompt_text(model, corrupted, corrupted_tokens[:1]))
    return clean_tokens, corrupted_tokens, mask, metric, None, texts


def set_texts(ps) -> tuple[str, str]:
    """How a result names a set's prompts: its first row's, and how many more."""
    more = f" (+{len(ps) - 1} more)" if len(ps) > 1 else ""
    return ps.rows[0].clean + more, ps.rows[0].corrupted + more


def by_length(prompts, metric, positions) -> list[tuple[torch.Tensor | None, object]]:
    """A prompt set whose rows differ in length, split into one set per length with the rows it holds:
    a sweep over each runs no padding, and skips the positions before the first change (the engine does
    that only for unpadded inputs). Measured on a 50-row IOI set of 14-17 tokens, head patching ran 1.36x
    faster split than padded. [(None, prompts)] when there is nothing to split, or when it would change
    what is computed: one prompt, one length, a metric made for the whole set (not a kind), or positions
    given as indices (which a padded set resolves against its longest row)."""
    from lens.data.prompt_set import PromptSet
    named = positions is None or all(isinstance(p, str) for p in ([positions] if isinstance(positions, str)
                                                                    else positions))
    if not isinstance(prompts, PromptSet) or prompts.same_length or not named or \
            not (metric is None or isinstance(metric, str)):
        return [(None, prompts)]
    lengths = prompts.lengths
    return [(rows, prompts[rows.tolist()]) for rows in
            ((lengths == n).nonzero()[:, 0] for n in lengths.unique(sorted=True))]


def join_rows(parts: list[tuple[torch.Tensor | None, torch.Tensor]]) -> torch.Tensor:
    """Per-row values of the parts by_length made ([rows of the part, ...] each) back in the set's row order."""
    if parts[0][0] is None:
        return parts[0][1]
    n = sum(len(rows) for rows, _ in parts)
    first = parts[0][1]
    out = first.new_empty(n, *first.shape[1:])
    for rows, values in parts:
        out[rows] = values
    return out


def sweep_scores(values: torch.Tensor, shape) -> torch.Tensor:
    """A sweep's values [n_patches] → [*shape], or per row [n_patches, n_rows] → [n_rows, *shape]."""
    if values.dim() == 1:
        return values.view(list(shape)) if len(shape) else values[0]
    return values.T.reshape(values.shape[1], *shape) if len(shape) else values[0]
