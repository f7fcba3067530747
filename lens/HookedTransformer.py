"""TransformerLens's `HookedTransformer` module under lens's name: `from lens.HookedTransformer import HookedTransformer`."""

from lens.model.transformer import HookedTransformer

__all__ = ["HookedTransformer"]
