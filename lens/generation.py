"""Text generation with hooks: sampling rules, stopping rules and a preallocated KV cache.

Every step is an ordinary forward of the model, so hooks fire while it generates
(attached with `fwd_hooks=` or around the call with `with model.hooks(...)`).
What a hook sees:

- With the KV cache (the default) the first step runs the whole prompt, so a hook
  sees `[batch, prompt_len, ...]`; every later step runs only the newest token:
  `[batch, 1, ...]`, and attention scores/patterns `[batch, n_heads, 1, keys so far]`.
- Without it (`use_past_kv_cache=False`) every step runs the whole sequence so far.
- `hook.ctx.positions` [batch, pos] is the absolute position of each position the
  hook sees (a padded row counts from its first real token), `hook.ctx.offset` the
  number of positions already in the cache. A steering hook that should act on the
  prompt only can test `hook.ctx.offset == 0`.

A batch of prompts is left-padded and masked, so each row generates what it would alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from lens import tokens as tok
from lens.model.kv_cache import KVCache

GenerateReturn = Literal["input", "str", "tokens"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the last position's logits."""

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    freq_penalty: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature <= 0 and self.do_sample:
            raise ValueError(f"temperature must be > 0 when sampling (got {self.temperature}); "
                             f"use do_sample=False for greedy decoding")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, not {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, not {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), not {self.repetition_penalty}")

    def penalised(self, logits: torch.Tensor, seen: torch.Tensor, seen_valid: torch.Tensor) -> torch.Tensor:
        """Repetition penalty as HF (divide positive logits of seen tokens, multiply negative ones)
        and frequency penalty as TransformerLens (subtract penalty × count)."""
        if self.repetition_penalty == 1.0 and self.freq_penalty == 0.0:
            return logits
        counts = torch.zeros_like(logits).scatter_add_(1, seen, seen_valid.to(logits.dtype))
        if self.repetition_penalty != 1.0:
            p = self.repetition_penalty
            logits = torch.where(counts > 0, torch.where(logits > 0, logits / p, logits * p), logits)
        return logits - self.freq_penalty * counts

    def choose(self, logits: torch.Tensor, seen: torch.Tensor, seen_valid: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
        """logits [batch, d_vocab] → next token ids [batch]."""
        logits = self.penalised(logits.float(), seen, seen_valid)
        if not self.do_sample:
            return logits.argmax(-1)
        logits = logits / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # Drop a token when the tokens ranked above it already hold top_p of the mass.
            drop = (probs.cumsum(-1) - probs) > self.top_p
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@dataclass(frozen=True)
class Stopping:
    eos_token_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]
    pad_token_id: int


def prompt_batch(model, input, prepend_bos: bool | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-padded tokens [batch, pos] and their mask (None when nothing is padded)."""
    if isinstance(input, torch.Tensor):
        tokens = input[None] if input.dim() == 1 else input
        return tokens.to(model.device), None
    tokens, mask = tok.tokenize(model.tokenizer, model.cfg, input, prepend_bos, "left")
    return tokens.to(model.device), None if bool(mask.all()) else mask.to(model.device)


def stopping_rules(model, stop_at_eos: bool, eos_token_id, stop_strings) -> Stopping:
    if eos_token_id is None:
        eos_token_id = model.cfg.eos_token_id
    eos = () if not stop_at_eos or eos_token_id is None else \
        tuple([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)
    stops = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings or ())
    if stops:
        tok.require_tokenizer(model.tokenizer)
    pad = next(i for i in (*eos, model.cfg.pad_token_id, model.cfg.eos_token_id, 0) if i is not None)
    return Stopping(eos, stops, pad)


def token_steps(model, tokens: torch.Tensor, mask: torch.Tensor | None, max_new_tokens: int, sampling: Sampling,
                stopping: Stopping, use_past_kv_cache: bool = True, seed: int | None = None,
                verbose: bool = False) -> Iterator[torch.Tensor]:
    """Yield the next token of every row [batch], step by step. A row that has stopped gets the
    pad token (EOS) from then on; the steps end when every row has stopped or after max_new_tokens."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, not {max_new_tokens}")
    batch, n = tokens.shape
    total = n + max_new_tokens
    seq = torch.full((batch, total), stopping.pad_token_id, dtype=torch.long, device=tokens.device)
    seq[:, :n] = tokens
    valid = torch.ones(batch, total, dtype=torch.bool, device=tokens.device)
    if mask is not None:
        valid[:, :n] = mask.bool()
    cache = KVCache(model.cfg, batch, total, model.dtype, model.device) if use_past_kv_cache else None
    generator = None if seed is None else torch.Generator(model.device).manual_seed(seed)
    eos = torch.tensor(stopping.eos_token_ids, dtype=torch.long, device=tokens.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    with torch.no_grad():
        for step in tqdm(range(max_new_tokens), disable=not verbose, desc="generating"):
            end = n + step
            if cache is None:
                logits = model(seq[:, :end], attention_mask=None if mask is None else valid[:, :end])
            elif step == 0:
                logits = model(tokens, attention_mask=mask, past_kv_cache=cache)
            else:
                logits = model(seq[:, end - 1:end], past_kv_cache=cache)
            next_tokens = sampling.choose(logits[:, -1], seq[:, :end], valid[:, :end], generator)
            next_tokens = next_tokens.masked_fill(finished, stopping.pad_token_id)
            seq[:, end] = next_tokens
            yield next_tokens
            finished |= torch.isin(next_tokens, eos)
            if stopping.stop_strings:
                finished |= _hit_stop_string(model, seq[:, n:end + 1], finished, stopping.stop_strings)
            if bool(finished.all()):
                return


def _hit_stop_string(model, new_tokens: torch.Tensor, finished: torch.Tensor, stops) -> torch.Tensor:
    hit = torch.zeros_like(finished)
    for row in (~finished).nonzero().flatten().tolist():
        text = model.tokenizer.decode(new_tokens[row].tolist())
        hit[row] = any(s in text for s in stops)
    return hit


def _texts(model, tokens: torch.Tensor, valid: torch.Tensor) -> list[str]:
    tokenizer = tok.require_tokenizer(model.tokenizer)
    return [tokenizer.decode(row[keep].tolist(), skip_special_tokens=True) for row, keep in zip(tokens, valid, strict=True)]


def generate(model, input, max_new_tokens: int = 10, stop_at_eos: bool = True, eos_token_id=None,
             do_sample: bool = True, top_k: int | None = None, top_p: float | None = None,
             temperature: float = 1.0, freq_penalty: float = 0.0, repetition_penalty: float = 1.0,
             use_past_kv_cache: bool = True, prepend_bos: bool | None = None, return_type: GenerateReturn = "input",
             verbose: bool = True, stop_strings: str | Sequence[str] | None = None, fwd_hooks=(),
             seed: int | None = None):
    """Continue a prompt (a string, a list of strings, or token ids [batch, pos]) by up to
    max_new_tokens tokens; also `model.generate(...)`.

    Sampling (do_sample=True, as TransformerLens) uses temperature, then top_k, then top_p;
    do_sample=False is greedy. repetition_penalty (HF's rule) and freq_penalty (TransformerLens's:
    logit − penalty × count) apply to both. A row stops at its EOS (stop_at_eos; eos_token_id
    defaults to the model's, may be a list) or once its generated text contains one of
    stop_strings; the rest of the batch goes on. fwd_hooks=[(name, fn), ...] are attached for
    the call (see the module docstring for what a hook sees at each step). seed makes sampling
    reproducible.

    return_type "input" gives strings for string input and tokens for token input; "str" the
    prompt plus its continuation as text (special tokens and padding dropped); "tokens" the
    prompt tokens (left-padded for a list) followed by the new ones, [batch, pos + new]; a row
    that stopped early is filled with EOS."""
    if return_type not in ("input", "str", "tokens"):
        raise ValueError(f"return_type must be 'input', 'str' or 'tokens', not {return_type!r}")
    tokens, mask = prompt_batch(model, input, prepend_bos)
    sampling = Sampling(do_sample, temperature, top_k, top_p, freq_penalty, repetition_penalty)
    stopping = stopping_rules(model, stop_at_eos, eos_token_id, stop_strings)
    with model.hooks(fwd_hooks):
        steps = list(token_steps(model, tokens, mask, max_new_tokens, sampling, stopping, use_past_kv_cache,
                                 seed, verbose))
    new = torch.stack(steps, dim=1) if steps else tokens[:, :0]
    output = torch.cat([tokens, new], dim=1)
    if return_type == "tokens" or (return_type == "input" and isinstance(input, torch.Tensor)):
        return output
    prompt_valid = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
    texts = _texts(model, output, torch.cat([prompt_valid, _before_stop(new, stopping)], dim=1))
    return texts[0] if isinstance(input, str) else texts


def _before_stop(new: torch.Tensor, stopping: Stopping) -> torch.Tensor:
    """[batch, steps] bool: the generated tokens up to and including each row's first EOS."""
    eos = torch.isin(new, torch.tensor(stopping.eos_token_ids, dtype=torch.long, device=new.device))
    return (eos.long().cumsum(1) - eos.long()) == 0


def generate_stream(model, input, max_new_tokens: int = 10, max_tokens_per_yield: int = 1,
                    stop_at_eos: bool = True, eos_token_id=None, do_sample: bool = True, top_k: int | None = None,
                    top_p: float | None = None, temperature: float = 1.0, freq_penalty: float = 0.0,
                    repetition_penalty: float = 1.0, use_past_kv_cache: bool = True, prepend_bos: bool | None = None,
                    return_type: GenerateReturn = "input", stop_strings: str | Sequence[str] | None = None,
                    fwd_hooks=(), seed: int | None = None):
    """generate(), yielding as it goes: every max_tokens_per_yield tokens, the new tokens
    [batch, k] (token output) or the new text of each row (string output: a string for a
    string prompt, else a list). The hooks stay attached while the stream is open."""
    if return_type not in ("input", "str", "tokens"):
        raise ValueError(f"return_type must be 'input', 'str' or 'tokens', not {return_type!r}")
    if max_tokens_per_yield < 1:
        raise ValueError(f"max_tokens_per_yield must be >= 1, not {max_tokens_per_yield}")
    tokens, mask = prompt_batch(model, input, prepend_bos)
    sampling = Sampling(do_sample, temperature, top_k, top_p, freq_penalty, repetition_penalty)
    stopping = stopping_rules(model, stop_at_eos, eos_token_id, stop_strings)
    as_tokens = return_type == "tokens" or (return_type == "input" and isinstance(input, torch.Tensor))
    generated, pending, sent = [], [], [""] * tokens.shape[0]

    def chunk():
        nonlocal sent
        if as_tokens:
            return torch.stack(pending, dim=1)
        new = torch.stack(generated, dim=1)
        texts = _texts(model, new, _before_stop(new, stopping))
        pieces, sent = [text[len(old):] for text, old in zip(texts, sent, strict=True)], texts
        return pieces[0] if isinstance(input, str) else pieces

    with model.hooks(fwd_hooks):
        for step in token_steps(model, tokens, mask, max_new_tokens, sampling, stopping, use_past_kv_cache, seed):
            generated.append(step)
            pending.append(step)
            if len(pending) == max_tokens_per_yield:
                yield chunk()
                pending = []
        if pending:
            yield chunk()
