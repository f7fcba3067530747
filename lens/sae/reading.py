"""Reading features: the top features at each token, and a feature's max-activating contexts over texts."""

from __future__ import annotations

from typing import Sequence

import torch

from lens.analysis.common import Result, in_range, prompt_text, prompt_tokens, str_tokens
from lens.sae.dictionary import SAE


def _texts(prompts) -> list:
    """A prompt, a list of prompts (strings or token ids), or a prompt set with .rows / .clean."""
    if isinstance(prompts, str) or (isinstance(prompts, torch.Tensor) and prompts.dim() == 1):
        return [prompts]
    rows = getattr(prompts, "rows", None)
    if rows is not None:
        return [getattr(r, "clean", r) for r in rows]
    texts = list(prompts)
    if not texts or not all(isinstance(t, (str, torch.Tensor)) for t in texts):
        raise ValueError("give a prompt, a non-empty list of prompts (strings or token ids), or a prompt set")
    return texts


def _label(model, text) -> str:
    return text if isinstance(text, str) else prompt_text(model, text, torch.as_tensor(text)[None])


def _stop_layer(model, sae: SAE) -> int:
    """The forward can stop after the block holding the dictionary's output hook."""
    layer = model.hook_dict[sae.cfg.out_hook].layer()
    return model.cfg.n_layers if layer is None else layer + 1


@torch.no_grad()
def feature_acts(model, sae: SAE, text) -> tuple[list[str], torch.Tensor]:
    """(str tokens, activations [pos, d_sae]) of one text, with `sae` spliced (error term on)."""
    name = f"{sae.cfg.hook_name}.hook_sae_acts_post"
    tokens = prompt_tokens(model, text)
    spliced = sae in model.attached_saes.values()
    with model.saes(None if spliced else sae):
        _, cache = model.run_with_cache(tokens, names_filter=name, stop_at_layer=_stop_layer(model, sae))
    return str_tokens(model, tokens), cache[name][0]


class TokenFeatures(Result):
    token: str
    features: list[tuple[int, float]]  # (feature, activation), strongest first


class TopFeaturesResult(Result):
    hook: str
    prompts: list[str]
    rows: list[list[TokenFeatures]]  # per prompt, per token
    l0: float  # mean active features per token over these prompts

    def summary(self) -> str:
        lines = [f"top features of {self.hook} per token (mean L0 {self.l0:.1f} active features/token)"]
        for prompt, row in zip(self.prompts, self.rows, strict=True):
            lines.append(f"{prompt!r}:")
            for t in row:
                feats = ", ".join(f"#{f} {a:.2f}" for f, a in t.features) or "(none active)"
                lines.append(f"  {t.token!r}: {feats}")
        return "\n".join(lines)

    def plot(self, path) -> str:
        """Tokens × the features that appear in any top list (first prompt), coloured by activation."""
        from lens.plots import heatmap
        row = self.rows[0]
        feats = sorted({f for t in row for f, _ in t.features})
        values = [[dict(t.features).get(f, 0.0) for t in row] for f in feats]
        return heatmap(values, [f"#{f}" for f in feats], [t.token for t in row],
                       f"top features of {self.hook}\n{self.prompts[0]!r}", "activation", path, "token", "feature",
                       signed=False)


def top_features(model, sae: SAE, prompts, k: int = 5) -> TopFeaturesResult:
    """The k most active features at each token of each prompt (a string or a list of strings)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    rows, active = [], []
    texts = _texts(prompts)
    for text in texts:
        toks, acts = feature_acts(model, sae, text)
        values, idx = acts.topk(min(k, sae.cfg.d_sae), dim=-1)
        rows.append([TokenFeatures(token=t, features=[(int(i), round(float(v), 4)) for v, i in zip(vs, ix, strict=True)
                                                      if v > 0]) for t, vs, ix in zip(toks, values, idx, strict=True)])
        active.append((acts != 0).sum(-1).float())
    return TopFeaturesResult(hook=sae.cfg.hook_name, prompts=[_label(model, t) for t in texts], rows=rows, l0=float(torch.cat(active).mean()))


class Context(Result):
    activation: float
    text_index: int
    position: int
    before: str  # the tokens before the peak
    token: str  # the peak token
    after: str


class ContextsResult(Result):
    hook: str
    feature: int
    n_texts: int
    n_tokens: int
    frequency: float  # the fraction of tokens where the feature is active
    contexts: list[Context]

    def summary(self) -> str:
        lines = [f"feature #{self.feature} of {self.hook}: active on {self.frequency:.2%} of {self.n_tokens} tokens "
                 f"in {self.n_texts} texts; top contexts (peak token in [[ ]]):"]
        for c in self.contexts:
            lines.append(f"  {c.activation:7.2f}  {c.before}[[{c.token}]]{c.after}")
        if not self.contexts:
            lines.append("  (never active on these texts)")
        return "\n".join(lines)


def max_activating(model, sae: SAE, texts: Sequence[str], feature: int, k: int = 10,
                   window: tuple[int, int] = (8, 3)) -> ContextsResult:
    """The k tokens over `texts` where `feature` is most active, with `window` = (tokens before, after)."""
    feature = in_range(feature, sae.cfg.d_sae, "feature", f"a dictionary of {sae.cfg.d_sae} features")
    texts = _texts(texts)
    found, n_tokens, n_active = [], 0, 0
    for i, text in enumerate(texts):
        toks, acts = feature_acts(model, sae, text)
        column = acts[:, feature]
        n_tokens, n_active = n_tokens + len(toks), n_active + int((column > 0).sum())
        for pos in column.nonzero().flatten().tolist():
            found.append((float(column[pos]), i, pos, toks))
    found.sort(key=lambda f: -f[0])
    contexts = [Context(activation=round(a, 4), text_index=i, position=pos,
                        before="".join(toks[max(0, pos - window[0]):pos]), token=toks[pos],
                        after="".join(toks[pos + 1:pos + 1 + window[1]])) for a, i, pos, toks in found[:k]]
    return ContextsResult(hook=sae.cfg.hook_name, feature=feature, n_texts=len(texts), n_tokens=n_tokens,
                          frequency=n_active / max(n_tokens, 1), contexts=contexts)


def feature_density(model, sae: SAE, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequency [d_sae], mean activation when active [d_sae]) over the tokens of `texts`."""
    count = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    total = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n = 0
    for text in _texts(texts):
        _, acts = feature_acts(model, sae, text)
        count += (acts > 0).sum(0).double().cpu()
        total += acts.sum(0).double().cpu()
        n += acts.shape[0]
    return count / max(n, 1), total / count.clamp(min=1)


class SelectiveFeature(Result):
    feature: int
    on_targets: float  # mean activation on the target tokens
    elsewhere: float  # mean activation on every other token


def selective_features(model, sae: SAE, texts, targets: Sequence[str], k: int = 5) -> list[SelectiveFeature]:
    """The features most selective for some tokens (e.g. [" Paris", " Tokyo"]) over `texts`: ranked by
    mean activation where a target token is minus mean activation elsewhere."""
    wanted = {t.strip() for t in targets}
    on = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    off = torch.zeros_like(on)
    n_on = n_off = 0
    for text in _texts(texts):
        toks, acts = feature_acts(model, sae, text)
        hit = torch.tensor([t.strip() in wanted for t in toks], device=acts.device)
        on += acts[hit].sum(0).double().cpu()
        off += acts[~hit].sum(0).double().cpu()
        n_on, n_off = n_on + int(hit.sum()), n_off + int((~hit).sum())
    if n_on == 0:
        raise ValueError(f"none of {sorted(wanted)} occurs as a token of the texts; check the tokenization")
    on, off = on / n_on, off / max(n_off, 1)
    best = (on - off).topk(min(k, sae.cfg.d_sae)).indices
    return [SelectiveFeature(feature=int(f), on_targets=float(on[f]), elsewhere=float(off[f])) for f in best]
