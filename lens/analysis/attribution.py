"""Direct logit attribution: how much each component writes to logit(answer) - logit(baseline).

Over a lens.data.PromptSet, every row is read at its own position (END by default) with its own answer and
baseline, in one batched forward; contributions are means over rows, each with its Spread."""

from __future__ import annotations

from typing import Literal

import torch

from lens.analysis.common import Result, prompt_text, prompt_tokens, resolve_pos, str_tokens, token_id, token_str
from lens.cache import ActivationCache
from lens.data.stats import Spread

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
    n_rows: int = 1  # over a prompt set: the rows the means are over
    spreads: list[Spread] | None = None  # over a set: one per listed contribution
    other_spreads: list[Spread] | None = None  # over a set, by="head": one per entry of others
    total_spread: Spread | None = None
    row_values: list[list[float]] | None = None  # [n_rows][listed contribution], on request

    @property
    def metric(self) -> str:
        return f"logit({self.answer!r})" + (f" - logit({self.baseline!r})" if self.baseline else "")

    def summary(self) -> str:
        where = f"position {self.position} ({self.str_tokens[self.position]!r})" if self.n_rows == 1 else \
            f"each row's {self.str_tokens[0]} over {self.n_rows} prompts (means)"
        lines = [f"direct logit attribution by {self.by} to {self.metric} at {where}: total {self.total:.3f}"
                 + ("" if self.total_spread is None else f" ({self.total_spread.text()})")]
        spreads = self.spreads or [None] * len(self.contributions)
        lines += [f"  {label:>14}  {value:+.3f}" + ("" if s is None else f"  {s.text()}")
                  for (label, value), s in zip(self.contributions, spreads, strict=True)]
        if self.others:
            lines.append("  and the other components (MLPs, embeddings):")
            other_spreads = self.other_spreads or [None] * len(self.others)
            lines += [f"  {label:>14}  {value:+.3f}" + ("" if s is None else f"  {s.text()}")
                      for (label, value), s in zip(self.others, other_spreads, strict=True)]
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


DLA_SKIPS = ("hook_pattern", "hook_attn_scores", "hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k",
             "hook_pre", "hook_pre_linear", "hook_normalized")


def _is_head(label: str) -> bool:
    """'L9H6' (a head), not 'L9 mlp', 'embed', ..."""
    return label.startswith("L") and "H" in label and " " not in label


@torch.no_grad()
def direct_logit_attribution(model, prompt, answer=None, baseline=None, by: By = "layer", pos: int | str = -1,
                             top_k: int = 12, per_row: bool = False) -> DLAResult:
    """Contributions of each layer / component / head / neuron to logit(answer) - logit(baseline),
    through the final norm with its cached scale; they sum to the total (checked). One forward pass.
    prompt may be a lens.data.PromptSet (answer / baseline then come from its rows; pos a position name,
    default END): means over rows with each contribution's spread, per_row keeping every row's values."""
    from lens.data.prompt_set import PromptSet
    from lens.data.stats import spread
    if by not in ("layer", "component", "head", "neuron"):
        raise ValueError(f"by must be 'layer', 'component', 'head' or 'neuron', not {by!r}")
    ps = prompt if isinstance(prompt, PromptSet) else None
    if ps is not None:
        tokens = ps.clean_tokens.to(model.device)
        name = "END" if pos == -1 else pos
        if not isinstance(name, str) or name not in ps.positions:
            raise ValueError(f"over a prompt set, pos is a position name: {ps.position_names}")
        positions = ps.positions[name]
        answer_ids, baseline_ids = ps.answer_ids, ps.baseline_ids
    else:
        if answer is None:
            raise ValueError("give the answer token (e.g. ' Paris'), or a lens.data.PromptSet as the prompt")
        tokens = prompt_tokens(model, prompt)
        positions = torch.tensor([resolve_pos(pos, tokens.shape[1])])
        answer_ids = torch.tensor([token_id(model, answer)])
        baseline_ids = None if baseline is None else torch.tensor([token_id(model, baseline)])
    n = tokens.shape[0]
    keep = (lambda name: not name.endswith(DLA_SKIPS) and (by == "neuron" or not name.endswith("hook_post")))
    logits, cache = model.run_with_cache(tokens, names_filter=keep)
    rows = torch.arange(n, device=logits.device)
    at = positions.to(logits.device)
    # every cached activation at each row's own position: [n, 1, ...], so one decomposition serves all rows
    gathered = ActivationCache({k: v[rows, at][:, None] for k, v in cache.items()}, model)
    if by in ("layer", "component"):
        stack, labels = gathered.decompose_resid(return_labels=True)
    else:
        stack, labels = gathered.get_full_resid_decomposition(expand_neurons=by == "neuron", return_labels=True)
    values = gathered.logit_attrs(stack, answer_ids, baseline_ids)[:, :, 0].float()  # [component, n]
    labels = [_rename(label) for label in labels]
    if by == "layer":  # embeddings together, then each layer's attn + mlp
        grouped: dict[str, torch.Tensor] = {}
        for label, value in zip(labels, values, strict=True):
            key = label.split(" ")[0] if label.startswith("L") else "embed"
            grouped[key] = grouped.get(key, 0.0) + value
        labels, values = list(grouped), torch.stack(list(grouped.values()))

    end_logits = logits[rows, at].float()  # [n, d_vocab]
    answer_ids = answer_ids.to(logits.device)
    total = end_logits[rows, answer_ids] - (0 if baseline_ids is None else end_logits[rows, baseline_ids.to(rows.device)])
    direction = model.W_U[:, answer_ids] - (0 if baseline_ids is None else model.W_U[:, baseline_ids.to(rows.device)])
    b_U = model.b_U[answer_ids] - (0 if baseline_ids is None else model.b_U[baseline_ids.to(rows.device)])
    final_bias = model.weights.ln_final_b @ direction if model.cfg.norm == "layernorm" else 0.0
    constant = (b_U + final_bias).float()  # [n]
    error = (values.sum(0) + constant - total).abs()
    if bool((error > 1e-3 * total.abs().clamp_min(1.0)).any()):
        worst = int(error.argmax())
        raise RuntimeError(f"direct logit attribution does not add up: components sum to "
                           f"{(values.sum(0) + constant)[worst].item():.5f}, the logits give {total[worst].item():.5f}")
    means = values.mean(1)
    order = means.abs().argsort(descending=True).tolist()
    if by == "head":  # heads and the rest ranked apart, so an MLP or the embedding cannot hide the heads
        is_head = [_is_head(label) for label in labels]
        shown = [i for i in order if is_head[i]][:top_k]
        others = [i for i in order if not is_head[i]][:top_k]
    else:
        shown, others = order[:top_k], []
    listed = set(shown) | set(others)
    grid = None
    if by == "head":
        head_values = dict(zip(labels, means.tolist(), strict=True))
        grid = [[head_values[f"L{l}H{h}"] for h in range(model.cfg.n_heads)] for l in range(model.cfg.n_layers)]
    ordered = by in ("layer", "component")
    if ps is None:
        text, tokens_str, position = prompt_text(model, prompt, tokens), str_tokens(model, tokens), int(positions[0])
        answer_str, baseline_str = token_str(model, int(answer_ids[0])), \
            None if baseline_ids is None else token_str(model, int(baseline_ids[0]))
    else:
        text = ps.rows[0].clean + (f" (+{n - 1} more)" if n > 1 else "")
        tokens_str, position, answer_str = [name], 0, "answer"
        baseline_str = None if baseline_ids is None else "baseline"
    return DLAResult(
        prompt=text, str_tokens=tokens_str, position=position, answer=answer_str, baseline=baseline_str, by=by,
        total=total.mean().item(), contributions=[(labels[i], means[i].item()) for i in shown],
        others=[(labels[i], means[i].item()) for i in others] if by == "head" else None,
        rest=sum(means[i].item() for i in order if i not in listed), constant=constant.mean().item(), head_grid=grid,
        layer_labels=labels if ordered else None, layer_values=means.tolist() if ordered else None,
        n_rows=n, spreads=None if ps is None else [spread(values[i]) for i in shown],
        other_spreads=None if ps is None or by != "head" else [spread(values[i]) for i in others],
        total_spread=None if ps is None else spread(total),
        row_values=values[shown].T.tolist() if per_row and ps is not None else None)
