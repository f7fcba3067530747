"""The logit lens: what the residual stream predicts after each layer, read through the final norm and unembedding."""

from __future__ import annotations

import torch

from lens.analysis.common import Result, prompt_text, prompt_tokens, resolve_pos, str_tokens, token_id, token_str


class TargetReading(Result):
    token: str
    prob: float
    rank: int  # 0 = the top token


class LayerReading(Result):
    label: str  # "embed", then "L0".."L{n-1}": the residual after that layer
    top: list[tuple[str, float]]  # (token, probability)
    targets: list[TargetReading]


class LogitLensResult(Result):
    prompt: str
    position: int
    str_tokens: list[str]
    layers: list[LayerReading]

    def summary(self) -> str:
        targets = [t.token for t in self.layers[0].targets]
        lines = [f"logit lens at position {self.position} ({self.str_tokens[self.position]!r}) of {self.prompt!r}"]
        for reading in self.layers:
            top = ", ".join(f"{tok!r} {p:.2f}" for tok, p in reading.top[:3])
            tgt = "".join(f"  {t.token!r}: rank {t.rank}, p {t.prob:.3f}" for t in reading.targets)
            lines.append(f"{reading.label:>6}  {top}{tgt}")
        if targets:
            first = [(r.label, t.rank) for r in self.layers for t in r.targets if t.token == targets[0]]
            top1 = next((label for label, rank in first if rank == 0), None)
            lines.append(f"{targets[0]!r} first becomes the top token at {top1}" if top1 else
                         f"{targets[0]!r} never becomes the top token (final rank {first[-1][1]})")
        return "\n".join(lines)


@torch.no_grad()
def logit_lens(model, prompt, targets=None, pos: int | str = -1, top_k: int = 5):
    """Per layer, the top-k next tokens and each target's probability and rank at `pos`.

    Each residual (embeddings, then after every layer) goes through the final norm with its own
    scale, as the model's last layer output does, then the unembedding. One forward pass.
    A lens.data.PromptSet as `prompt`: each row's answer at its own position (pos a name, default END),
    mean and spread over rows (lens.data.set_logit_lens)."""
    from lens.data.prompt_set import PromptSet
    if isinstance(prompt, PromptSet):
        from lens.data.reading import set_logit_lens
        return set_logit_lens(model, prompt, "END" if pos == -1 else pos)
    tokens = prompt_tokens(model, prompt)
    position = resolve_pos(pos, tokens.shape[1])
    target_ids = [token_id(model, t) for t in (targets or [])]
    names = ["hook_embed", "hook_pos_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=[n for n in names if n in model.hook_dict])
    embeds = cache["embed"] + (cache["pos_embed"] if "hook_pos_embed" in model.hook_dict else 0)
    resids = [embeds] + [cache["resid_post", i] for i in range(model.cfg.n_layers)]
    stack = torch.cat([r[:, position] for r in resids])  # [n_points, d_model]
    probs = model.final_logits(stack[:, None])[:, 0].float().softmax(-1)  # [n_points, d_vocab]
    top = probs.topk(top_k, dim=-1)
    layers = []
    for i, label in enumerate(["embed"] + [f"L{j}" for j in range(model.cfg.n_layers)]):
        readings = [TargetReading(token=token_str(model, t), prob=probs[i, t].item(),
                                  rank=int((probs[i] > probs[i, t]).sum())) for t in target_ids]
        layers.append(LayerReading(label=label, targets=readings, top=[
            (token_str(model, int(t)), p.item()) for p, t in zip(top.values[i], top.indices[i], strict=True)]))
    text = prompt_text(model, prompt, tokens)
    return LogitLensResult(prompt=text, position=position, str_tokens=str_tokens(model, tokens), layers=layers)
