"""Reading analyses over a prompt set: the logit lens and attention summaries, each row read at its own
positions in one batched forward, with mean, spread and agreement over rows.

(Direct logit attribution takes a set itself: lens.analysis.direct_logit_attribution(model, ps).)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lens.data.stats import Result, Spread, spread


class SetLensLayer(Result):
    label: str  # "embed", then "L0".."L{n-1}": the residual after that layer
    answer_prob: Spread  # the answer's probability at each row's position
    answer_top: int  # rows whose answer is the top token here
    logit_diff: Spread | None  # logit(answer) - logit(baseline), when the rows have baselines


class SetLogitLens(Result):
    n_rows: int
    position: str
    layers: list[SetLensLayer]

    @property
    def first_top_layer(self) -> str | None:
        """The first layer where the answer is the top token on most rows."""
        return next((l.label for l in self.layers if l.answer_top * 2 > self.n_rows), None)

    def summary(self) -> str:
        lines = [f"logit lens at each row's {self.position} over {self.n_rows} prompts"]
        for layer in self.layers:
            diff = "" if layer.logit_diff is None else f"; logit diff {layer.logit_diff.text()}"
            lines.append(f"{layer.label:>6}  p(answer) {layer.answer_prob.mean:.3f} ± "
                         f"{(layer.answer_prob.ci95[1] - layer.answer_prob.ci95[0]) / 2:.3f}, top on "
                         f"{layer.answer_top}/{self.n_rows}{diff}")
        first = self.first_top_layer
        lines.append(f"the answer first becomes the top token on most rows at {first}" if first else
                     "the answer is never the top token on most rows")
        return "\n".join(lines)


@torch.no_grad()
def set_logit_lens(model, ps, position: str = "END", per_row: bool = False) -> SetLogitLens:
    """Per layer (embeddings, then each block's output), each row's answer probability, whether it is the
    top token, and logit(answer) - logit(baseline), read through the final norm at the row's position."""
    names = ["hook_embed", "hook_pos_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(ps.clean_tokens.to(model.device),
                                    names_filter=[n for n in names if n in model.hook_dict])
    rows = torch.arange(len(ps), device=model.device)
    at = ps.positions[position].to(model.device)
    embeds = cache["embed"] + (cache["pos_embed"] if "hook_pos_embed" in model.hook_dict else 0)
    resids = [embeds] + [cache["resid_post", i] for i in range(model.cfg.n_layers)]
    stack = torch.stack([r[rows, at] for r in resids])  # [n_points, n_rows, d_model]
    logits = model.final_logits(stack).float()  # [n_points, n_rows, d_vocab]
    answer = ps.answer_ids.to(model.device).view(1, -1, 1).expand(len(resids), -1, 1)
    answer_logit = logits.gather(-1, answer)[..., 0]  # [n_points, n_rows]
    probs = logits.softmax(-1).gather(-1, answer)[..., 0]
    top = (logits > answer_logit[..., None]).sum(-1) == 0
    diff = None
    if ps.baseline_ids is not None:
        baseline = ps.baseline_ids.to(model.device).view(1, -1, 1).expand(len(resids), -1, 1)
        diff = answer_logit - logits.gather(-1, baseline)[..., 0]
    labels = ["embed"] + [f"L{j}" for j in range(model.cfg.n_layers)]
    return SetLogitLens(n_rows=len(ps), position=position, layers=[
        SetLensLayer(label=label, answer_prob=spread(probs[i], per_row), answer_top=int(top[i].sum()),
                     logit_diff=None if diff is None else spread(diff[i], per_row))
        for i, label in enumerate(labels)])


class SetHeadAttention(Result):
    layer: int
    head: int
    to: dict[str, Spread]  # key position name → the attention the query gives its tokens (summed over a span)

    def summary(self) -> str:
        parts = ", ".join(f"{name} {s.mean:.2f} ± {s.std:.2f}" for name, s in self.to.items())
        return f"L{self.layer}H{self.head}: {parts}"


class SetAttention(Result):
    n_rows: int
    query: str
    heads: list[SetHeadAttention]

    def summary(self) -> str:
        lines = [f"attention from each row's {self.query} over {self.n_rows} prompts (mean ± std)"]
        return "\n".join(lines + ["  " + h.summary() for h in self.heads])


@torch.no_grad()
def set_attention(model, ps, heads: Sequence[tuple[int, int]], query: str = "END",
                  keys: Sequence[str] | None = None, per_row: bool = False) -> SetAttention:
    """For each (layer, head): the attention each row's `query` position pays to each named key position
    (a span's tokens summed), mean and spread over rows. keys: names (default every name but the query)."""
    keys = [k for k in ps.position_names if k != query] if keys is None else list(keys)
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise ValueError(f"head ({layer}, {head}) does not exist: layers 0..{model.cfg.n_layers - 1}, "
                             f"heads 0..{model.cfg.n_heads - 1}")
    layers = sorted({layer for layer, _ in heads})
    _, cache = model.run_with_cache(ps.clean_tokens.to(model.device), names_filter=[("pattern", l) for l in layers])
    rows = torch.arange(len(ps), device=model.device)
    q = ps.positions[query].to(model.device)
    masks = {k: ps.span_mask(k).to(model.device).float() for k in keys}
    out = []
    for layer, head in heads:
        weights = cache["pattern", layer][rows, head, q].float()  # [n_rows, k_pos]
        out.append(SetHeadAttention(layer=layer, head=head, to={
            k: spread((weights * mask).sum(-1), per_row) for k, mask in masks.items()}))
    return SetAttention(n_rows=len(ps), query=query, heads=out)


@torch.no_grad()
def set_head_scores(model, ps, kind: str = "previous_token", per_row: bool = False):
    """A [layer, head] score table per row, then its mean and spread: "previous_token" (attention from each
    real token to the one before), or on a set with a "first_copy" span (make_dataset(model, "induction"))
    "induction" (from each token of the second copy to the token after its first occurrence) and
    "duplicate_token" (to its first occurrence). As lens.analysis.detect_heads, attention to BOS is left out:
    each query's row is renormalised over the other keys."""
    from lens.analysis.heads import HeadScores, _result
    from lens.data.stats import grid_spread
    if kind not in ("previous_token", "induction", "duplicate_token"):
        raise ValueError(f"over a prompt set, kind is 'previous_token', 'induction' or 'duplicate_token', "
                         f"not {kind!r}")
    if kind != "previous_token" and "first_copy" not in ps.spans:
        raise ValueError(f"{kind} scores need repeated tokens: a set with a 'first_copy' span, such as "
                         f"make_dataset(model, 'induction')")
    _, cache = model.run_with_cache(ps.clean_tokens.to(model.device),
                                    names_filter=lambda name: name.endswith("hook_pattern"))
    patterns = torch.stack([cache["pattern", i].float() for i in range(model.cfg.n_layers)])  # [L, n, H, q, k]
    bos_id = model.cfg.bos_token_id
    scores = []
    for i in range(len(ps)):
        n = int(ps.lengths[i])
        bos = int(bos_id is not None and int(ps.clean_tokens[i, 0]) == bos_id)
        rows = patterns[:, i, :, :n, :n]  # [L, H, q, k]
        if bos:
            rows = torch.cat([torch.zeros_like(rows[..., :1]), rows[..., 1:]], -1)
            rows = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
        if kind == "previous_token":
            queries = torch.arange(1 + bos, n)
            keys = queries - 1
        else:
            start, stop = ps.spans["first_copy"][i].tolist()
            length = stop - start
            queries = torch.arange(stop, n)
            keys = queries - length + (1 if kind == "induction" else 0)
        scores.append(rows[:, :, queries, keys].mean(-1))  # [L, H]
    mean, cells = grid_spread(torch.stack(scores).cpu(), per_row)
    result: HeadScores = _result(kind, mean.float(), f"{len(ps)} prompts of a {ps.task or 'given'} set (means)")
    return result.model_copy(update={"n_rows": len(ps), "spread": cells})
