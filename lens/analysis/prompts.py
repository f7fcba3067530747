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


class AttentionPatterns(Result):
    prompt: str
    str_tokens: list[str]
    heads: list[HeadPattern]

    def summary(self) -> str:
        lines = [f"attention on {self.prompt!r} ({len(self.str_tokens)} tokens)"]
        for h in self.heads:
            last_q, key, weight = h.strongest[-1]
            lines.append(f"  L{h.layer}H{h.head}: the last token attends most to {key} "
                         f"({self.str_tokens[key]!r}, {weight:.2f})")
        return "\n".join(lines)


@torch.no_grad()
def attention_patterns(model, prompt, heads: list[tuple[int, int]]):
    """The attention patterns of chosen (layer, head) pairs with the prompt's string tokens. A
    lens.data.PromptSet as `prompt`: the attention from each row's END to its named positions, mean and
    spread over rows (lens.data.set_attention)."""
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
        out.append(HeadPattern(layer=layer, head=head, pattern=pattern.tolist(),
                               strongest=[(q, int(k), w.item()) for q, (w, k) in enumerate(zip(weight, key, strict=True))]))
    text = prompt_text(model, prompt, tokens)
    return AttentionPatterns(prompt=text, str_tokens=str_tokens(model, tokens), heads=out)
