"""Reading one prompt: the answer's rank and probability (test_prompt) and chosen heads' attention."""

from __future__ import annotations

import torch

from lens.analysis.common import Result, prompt_text, prompt_tokens, str_tokens, token_id, token_str


class PromptTest(Result):
    prompt: str
    answer: str
    rank: int  # 0 = the model's top next token
    logit: float
    prob: float
    top: list[tuple[str, float, float]]  # (token, logit, probability)

    def summary(self) -> str:
        top = ", ".join(f"{t!r} {p:.3f}" for t, _, p in self.top)
        return (f"{self.prompt!r} → {self.answer!r}: rank {self.rank}, logit {self.logit:.2f}, prob {self.prob:.3f}. "
                f"Top: {top}")


@torch.no_grad()
def test_prompt(model, prompt: str, answer, top_k: int = 10) -> PromptTest:
    """Rank, logit and probability of `answer` (one token) as the next token, and the top-k, like
    TransformerLens's utils.test_prompt."""
    tokens = prompt_tokens(model, prompt)
    answer_id = token_id(model, answer)
    logits = model(tokens)[0, -1].float()
    probs = logits.softmax(-1)
    top = probs.topk(top_k)
    return PromptTest(prompt=prompt, answer=token_str(model, answer_id), rank=int((logits > logits[answer_id]).sum()),
                      logit=logits[answer_id].item(), prob=probs[answer_id].item(),
                      top=[(token_str(model, int(i)), logits[i].item(), p.item()) for p, i in zip(top.values, top.indices, strict=True)])


test_prompt.__test__ = False  # a library function, not a pytest test


class HeadPattern(Result):
    layer: int
    head: int
    pattern: list[list[float]]  # [query, key]
    strongest: list[tuple[int, int, float]]  # per query: (query, key it attends to most, weight)
    top: list[list[tuple[int, float]]]  # per query: its top_k keys (key 0 left out with skip_first), best first
    first: list[float]  # per query: the weight on key 0 (the attention sink in most models)


class AttentionPatterns(Result):
    prompt: str
    str_tokens: list[str]
    heads: list[HeadPattern]

    skip_first: bool = False  # whether `top` leaves out key 0

    def summary(self) -> str:
        lines = [f"attention on {self.prompt!r} ({len(self.str_tokens)} tokens)"]
        for h in self.heads:
            keys = ", ".join(f"{k} {self.str_tokens[k]!r} {w:.2f}" for k, w in h.top[-1])
            sink = f" (position 0: {h.first[-1]:.2f})" if self.skip_first else ""
            lines.append(f"  L{h.layer}H{h.head}: the last token attends most to {keys}{sink}")
        return "\n".join(lines)


@torch.no_grad()
def attention_patterns(model, prompt, heads: list[tuple[int, int]], top_k: int = 3, skip_first: bool = False):
    """The attention patterns of chosen (layer, head) pairs with the prompt's string tokens, and per query
    its top_k keys; skip_first leaves key 0 out of that ranking (most heads park attention there, BOS or
    not, so it hides what a head reads), reporting its weight apart. A lens.data.PromptSet as `prompt`:
    the attention from each row's END to its named positions, mean and spread over rows
    (lens.data.set_attention)."""
    from lens.data.prompt_set import PromptSet
    if isinstance(prompt, PromptSet):
        from lens.data.reading import set_attention
        return set_attention(model, prompt, heads)
    tokens = prompt_tokens(model, prompt)
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise ValueError(f"head ({layer}, {head}) does not exist: layers 0..{model.cfg.n_layers - 1}, "
                             f"heads 0..{model.cfg.n_heads - 1}")
    layers = sorted({layer for layer, _ in heads})
    _, cache = model.run_with_cache(tokens, names_filter=[("pattern", layer) for layer in layers])
    out = []
    for layer, head in heads:
        pattern = cache["pattern", layer][0, head].float()  # [q, k]
        weight, key = pattern.max(-1)
        n = pattern.shape[-1]
        ranked = pattern.masked_fill(torch.ones(n, n, dtype=torch.bool, device=pattern.device).triu(1), -1.0)
        if skip_first:
            ranked[1:, 0] = -1.0  # query 0 sees only key 0: keep it
        top = ranked.topk(min(top_k, n), dim=-1)  # -1 marks keys a query cannot (or chose not to) rank
        tops = [[(k, w) for k, w in zip(keys, weights, strict=True) if w >= 0]
                for keys, weights in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
        out.append(HeadPattern(layer=layer, head=head, pattern=pattern.tolist(),
                               strongest=[(q, int(k), w.item()) for q, (w, k) in enumerate(zip(weight, key, strict=True))],
                               top=tops, first=pattern[:, 0].tolist()))
    text = prompt_text(model, prompt, tokens)
    return AttentionPatterns(prompt=text, str_tokens=str_tokens(model, tokens), heads=out, skip_first=skip_first)
