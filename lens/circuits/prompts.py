"""The prompts a circuit is found and judged on: clean and corrupted token batches of the same shape."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lens.patching.inputs import pair_tokens


@dataclass(frozen=True)
class Pair:
    """clean / corrupted [batch, pos] token ids, matched position by position; mask [batch, pos] or None."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    mask: torch.Tensor | None = None

    @classmethod
    def of(cls, model, clean, corrupted=None, mask: torch.Tensor | None = None) -> Pair:
        """From a Pair, a prompt set (anything with clean/corrupted tokens and a mask), strings, lists
        of strings or token tensors."""
        if isinstance(clean, Pair):
            return clean
        if corrupted is None and hasattr(clean, "clean_tokens"):  # a lens.data.PromptSet
            if clean.corrupted_tokens is None:
                raise ValueError("circuit discovery patches between clean and corrupted prompts; this set has "
                                 "noise corruption and no corrupted prompts: use a set with corrupted prompts")
            mask = clean.attention_mask
            return cls(clean.clean_tokens.to(model.device), clean.corrupted_tokens.to(model.device),
                       None if bool(mask.all()) else mask.to(model.device))
        if corrupted is None:
            raise ValueError("give the corrupted prompts too (or a prompt set that holds both)")
        clean_tokens, corrupted_tokens, pair_mask = pair_tokens(model, clean, corrupted)
        mask = pair_mask if mask is None else mask.to(model.device)
        return cls(clean_tokens, corrupted_tokens, mask)

    def __len__(self) -> int:
        return self.clean.shape[0]

    def same(self, other: Pair) -> bool:
        """Whether other holds the same tokens and mask."""
        def equal(a, b):
            return (a is None) == (b is None) and (a is None or (a.shape == b.shape and torch.equal(a, b)))
        return equal(self.clean, other.clean) and equal(self.corrupted, other.corrupted) and \
            equal(self.mask, other.mask)

    def unchanged(self) -> int:
        """How many leading positions hold the same token in every clean and corrupted row."""
        differs = (self.clean != self.corrupted).any(0)
        return int(differs.int().argmax()) if bool(differs.any()) else self.clean.shape[1]

    def positions(self, start: int) -> Pair:
        """The positions start.. of every row (the mask of those positions only: a forward continuing a KV
        cache of the first `start` reads the rest from the cache)."""
        if not start:
            return self
        return Pair(self.clean[:, start:], self.corrupted[:, start:], None if self.mask is None else self.mask[:, start:])

    def rows(self, index: slice) -> Pair:
        return Pair(self.clean[index], self.corrupted[index], None if self.mask is None else self.mask[index])

    def row_values(self, model, metric, which: str = "both") -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The metric per prompt on the clean and on the corrupted prompts: ([batch], [batch]) float64
        (None for the one `which` ("clean", "corrupted", "both") leaves out)."""
        from lens.circuits.patched import row_metric
        positions, per_row = row_metric(metric, self.clean.shape[1])
        out = []
        with torch.no_grad():
            for name, tokens in (("clean", self.clean), ("corrupted", self.corrupted)):
                if which not in ("both", name):
                    out.append(None)
                    continue
                keep = {}
                last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
                with model.hooks(fwd_hooks=[(last, lambda x, point, keep=keep: keep.update(resid=x))]):
                    model(tokens, attention_mask=self.mask, return_type=None)
                resid = keep["resid"] if positions is None else keep["resid"][:, positions]
                out.append(per_row(model.final_logits(resid)).double().cpu())
        return out[0], out[1]

    def values(self, model, metric) -> tuple[float, float]:
        clean, corrupted = self.row_values(model, metric)
        return float(clean.mean()), float(corrupted.mean())
