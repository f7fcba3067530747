"""TransformerLens's `FactoredMatrix` module under lens's name: `from lens.FactoredMatrix import FactoredMatrix`."""

from lens.factored import FactoredMatrix

__all__ = ["FactoredMatrix"]
