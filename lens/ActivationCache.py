"""TransformerLens's `ActivationCache` module under lens's name: `from lens.ActivationCache import ActivationCache`."""

from lens.cache import ActivationCache

__all__ = ["ActivationCache"]
