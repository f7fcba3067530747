"""Direct logit attribution: how much each component writes to logit(answer) - logit(baseline)."""

from __future__ import annotations

from typing import Literal

import torch

from lens.analysis.common import Result, prompt_text, prompt_tokens, resolve_pos, str_tokens, token_id, token_str

By = Literal["layer", "component", "head", "neuron"]


class DLAResult(Result):
    prompt: str
    str_tokens: list[str]
    position: int
    answer: str
    baseline: str | None
    by: str
    total: float  # logit(answer) - logit(baseline) from the model's logits
    contributions: list[tuple[str, float]]  # the top components by |contribution| (by="head": heads only)
    others: list[tuple[str, float]] | None = None  # by="head": the top other terms (MLPs, embeddings, biases)
    rest: float  # sum of the components not listed (in contributions or others)
    constant: float  # the final norm's bias and b_U, which no component owns
    head_grid: list[list[float]] | None = None  # [layer][head] when by == "head"
    layer_labels: list[str] | None = None  # the ordered components when by is "layer" or "component"
    layer_values: list[float] | None = None

    @property
    def metric(self) -> str:
        return f"logit({self.answer!r})" + (f" - logit({self.baseline!r})" if self.baseline else "")

    def summary(self) -> str:
        lines = [f"direct logit attribution by {self.by} to {self.metric} at position {self.position} "
                 f"({self.str_tokens[self.position]!r}): total {self.total:.3f}"]
        lines += [f"  {label:>14}  {value:+.3f}" for label, value in self.contributions]
        if self.others:
            lines.append("  and the other components (MLPs, embeddings):")
            lines += [f"  {label:>14}  {value:+.3f}" for label, value in self.others]
        listed = sum(v for _, v in self.contributions + (self.others or []))
        lines.append(f"  listed {listed:+.3f}, the rest {self.rest:+.3f}, bias terms {self.constant:+.3f} "
                     f"(sum {listed + self.rest + self.constant:+.3f} = total)")
        return "\n".join(lines)


def _rename(label: str) -> str:
    """decompose_resid labels in the form the summaries use: '3_attn_out' → 'L3 attn'."""
    if label.endswith(("_attn_out", "_mlp_out")):
        layer, kind = label.split("_", 1)
        return f"L{layer} {kind.removesuffix('_out')}"
    return {"bias": "attn+mlp biases"}.get(label, label)


def _is_head(label: str) -> bool:
    """'L9H6' (a head), not 'L9 mlp', 'embed', ..."""
    return label.startswith("L") and "H" in label and " " not in label


@torch.no_grad()
def direct_logit_attribution(model, prompt, answer, baseline=None, by: By = "layer", pos: int = -1,
                             top_k: int = 12) -> DLAResult:
    """Contributions of each layer / component / head / neuron to logit(answer) - logit(baseline),
    through the final norm with its cached scale; they sum to the total (checked). One forward pass."""
    if by not in ("layer", "component", "head", "neuron"):
        raise ValueError(f"by must be 'layer', 'component', 'head' or 'neuron', not {by!r}")
    tokens = prompt_tokens(model, prompt)
    position = resolve_pos(pos, tokens.shape[1])
    answer_id = token_id(model, answer)
    baseline_id = None if baseline is None else token_id(model, baseline)
    logits, cache = model.run_with_cache(tokens)
    sl = slice(position, position + 1)
    if by in ("layer", "component"):
        stack, labels = cache.decompose_resid(pos_slice=sl, return_labels=True)
    else:
        stack, labels = cache.get_full_resid_decomposition(expand_neurons=by == "neuron", pos_slice=sl,
                                                           return_labels=True)
    values = cache.logit_attrs(stack, answer_id, baseline_id, pos_slice=sl)[:, 0, 0].float()
    labels = [_rename(label) for label in labels]
    if by == "layer":  # embeddings together, then each layer's attn + mlp
        grouped: dict[str, float] = {}
        for label, value in zip(labels, values.tolist(), strict=True):
            key = label.split(" ")[0] if label.startswith("L") else "embed"
            grouped[key] = grouped.get(key, 0.0) + value
        labels, values = list(grouped), torch.tensor(list(grouped.values()))

    total = logits[0, position, answer_id] - (0 if baseline_id is None else logits[0, position, baseline_id])
    direction = model.W_U[:, answer_id] - (0 if baseline_id is None else model.W_U[:, baseline_id])
    b_U = model.b_U[answer_id] - (0 if baseline_id is None else model.b_U[baseline_id])
    final_bias = model.weights.ln_final_b @ direction if model.cfg.norm == "layernorm" else 0.0
    constant = float(b_U + final_bias)
    error = abs(values.sum().item() + constant - total.item())
    if error > 1e-3 * max(1.0, abs(total.item())):
        raise RuntimeError(f"direct logit attribution does not add up: components sum to "
                           f"{values.sum().item() + constant:.5f}, the logits give {total.item():.5f}")
    order = values.abs().argsort(descending=True).tolist()
    if by == "head":  # heads and the rest ranked apart, so an MLP or the embedding cannot hide the heads
        is_head = [_is_head(label) for label in labels]
        shown = [i for i in order if is_head[i]][:top_k]
        others = [i for i in order if not is_head[i]][:top_k]
    else:
        shown, others = order[:top_k], []
    listed = set(shown) | set(others)
    grid = None
    if by == "head":
        H = model.cfg.n_heads
        head_values = dict(zip(labels, values.tolist(), strict=True))
        grid = [[head_values[f"L{l}H{h}"] for h in range(H)] for l in range(model.cfg.n_layers)]
    ordered = by in ("layer", "component")
    text = prompt_text(model, prompt, tokens)
    return DLAResult(
        prompt=text, str_tokens=str_tokens(model, tokens), position=position, answer=token_str(model, answer_id),
        baseline=None if baseline_id is None else token_str(model, baseline_id), by=by, total=total.item(),
        contributions=[(labels[i], values[i].item()) for i in shown],
        others=[(labels[i], values[i].item()) for i in others] if by == "head" else None,
        rest=sum(values[i].item() for i in order if i not in listed), constant=constant, head_grid=grid,
        layer_labels=labels if ordered else None, layer_values=values.tolist() if ordered else None)
