"""How good a dictionary is on text: the standard SAE evaluation numbers.

- L0: active features per token (mean).
- explained variance: 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖² over tokens, x the true activation at the
  dictionary's output hook, x̂ its reconstruction, x̄ the mean activation over these tokens.
- cross-entropy loss recovered: (L_zero - L_spliced) / (L_zero - L_clean), with L_spliced the
  next-token loss with the reconstruction in place of the activation (no error term) and L_zero the
  loss with the activation zeroed. 1 = as good as the model, 0 = no better than deleting it.

The first token (BOS) is left out of L0 and explained variance by default: its residual norm is
typically tens of times the others and would dominate both (losses always use every target).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lens.analysis.common import Result, prompt_tokens
from lens.sae.dictionary import SAE
from lens.sae.reading import _texts


class QualityResult(Result):
    hook: str
    n_texts: int
    n_tokens: int
    l0: float
    explained_variance: float
    mse: float  # mean over tokens of ‖x - x̂‖² / d
    dead_fraction: float  # features never active on these texts
    loss_clean: float
    loss_spliced: float
    loss_zero_ablated: float
    ce_loss_recovered: float

    def summary(self) -> str:
        verdict = ("usable" if self.ce_loss_recovered > 0.8 and self.explained_variance > 0.6 else
                   "weak: read its features with care" if self.ce_loss_recovered > 0.5 else
                   "poor: conclusions about its features may not hold for the model")
        return (f"dictionary at {self.hook} on {self.n_tokens} tokens of {self.n_texts} texts: L0 {self.l0:.1f}, "
                f"explained variance {self.explained_variance:.3f}, MSE {self.mse:.4g}, dead features "
                f"{self.dead_fraction:.1%}\n"
                f"loss clean {self.loss_clean:.3f}, spliced (no error term) {self.loss_spliced:.3f}, zero-ablated "
                f"{self.loss_zero_ablated:.3f} → CE loss recovered {self.ce_loss_recovered:.3f} ({verdict})")


def _zero(sae: SAE):
    head = sae.cfg.hook_head_index

    def hook(x, point):
        if head is None:
            return torch.zeros_like(x)
        x = x.clone()
        x[..., head, :] = 0
        return x
    return hook


@torch.no_grad()
def quality(model, sae: SAE, texts: Sequence[str] | str, skip_first: bool = True) -> QualityResult:
    """L0, explained variance, MSE, dead features and CE loss recovered of `sae` on `texts`."""
    if sae in model.attached_saes.values():
        raise ValueError("quality() splices the dictionary itself; remove it first (model.remove_sae)")
    texts = _texts(texts)
    in_hook, out_hook = sae.cfg.hook_name, sae.cfg.out_hook
    xs, recons, l0s, active = [], [], [], torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    losses = {"clean": [], "spliced": [], "zero": []}
    layer = model.hook_dict[out_hook].layer()
    entry = None if layer is None else f"blocks.{layer}.hook_resid_pre"  # the spliced runs start there
    for text in texts:
        tokens = prompt_tokens(model, text)
        loss, cache = model.run_with_cache(tokens, return_type="loss", loss_per_token=True,
                                           names_filter=sorted({in_hook, out_hook} | ({entry} if entry else set())))
        run = {"input": tokens} if entry is None else {"input": cache[entry], "start_at_layer": layer,
                                                         "tokens": tokens}
        losses["clean"].append(loss[0])
        start = 1 if skip_first and tokens.shape[1] > 1 else 0
        head = sae.cfg.hook_head_index
        x_in, x_out = cache[in_hook][0, start:], cache[out_hook][0, start:]
        if head is not None:
            x_in, x_out = x_in[..., head, :], x_out[..., head, :]
        acts = sae.encode(x_in)
        out = sae.decode(acts)
        skip = sae.skip(x_in)
        out = out if skip is None else out + skip
        xs.append(x_out.reshape(len(x_out), -1).double())
        recons.append(out.reshape(len(out), -1).double())
        l0s.append((acts != 0).sum(-1).double())
        active |= (acts != 0).any(0).cpu()
        with model.saes(sae, use_error_term=False):
            losses["spliced"].append(model(**run, return_type="loss", loss_per_token=True)[0])
        losses["zero"].append(model.run_with_hooks(**run, fwd_hooks=[(out_hook, _zero(sae))], return_type="loss",
                                                   loss_per_token=True)[0])
    x, x_hat = torch.cat(xs), torch.cat(recons)
    err = (x - x_hat).pow(2).sum(-1)
    ev = 1 - float(err.sum() / (x - x.mean(0)).pow(2).sum())
    mean = {k: float(torch.cat(v).mean()) for k, v in losses.items()}
    recovered = (mean["zero"] - mean["spliced"]) / (mean["zero"] - mean["clean"])
    return QualityResult(hook=in_hook, n_texts=len(texts), n_tokens=len(x), l0=float(torch.cat(l0s).mean()),
                         explained_variance=ev, mse=float(err.mean()) / x.shape[-1],
                         dead_fraction=1 - float(active.float().mean()), loss_clean=mean["clean"],
                         loss_spliced=mean["spliced"], loss_zero_ablated=mean["zero"], ce_loss_recovered=recovered)
