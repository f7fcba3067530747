"""TransformerLens's `SVDInterpreter` module under lens's name: `from lens.SVDInterpreter import SVDInterpreter`."""

from lens.compat.svd_interpreter import SVDInterpreter

__all__ = ["SVDInterpreter"]
