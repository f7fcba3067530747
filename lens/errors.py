"""The exceptions lens raises: each names what was wrong and what is valid."""


class LensError(Exception):
    """Base class of every error lens raises on purpose."""


class UnknownHookError(LensError, KeyError):
    """A hook name that this model does not have."""

    def __str__(self):  # KeyError quotes its message; show it as written
        return str(self.args[0])


class HookWouldNotFireError(LensError, ValueError):
    """A hook is attached to a point that this forward pass never reaches."""


class UnknownModelError(LensError, ValueError):
    """A model name that is neither an alias, a local path, nor a reachable hub id."""


class UnsupportedModelError(LensError, ValueError):
    """A checkpoint whose architecture lens has no family for."""


class CorruptCheckpointError(LensError, ValueError):
    """A weights file that cannot be read."""


class SequenceTooLongError(LensError, ValueError):
    """A prompt longer than the model's context window."""


class TokenizationError(LensError, ValueError):
    """A string that is not the single token it was asked to be, or no tokenizer at all."""


class ModelFileNotFoundError(LensError, FileNotFoundError):
    """A local model path that does not exist."""


class InsufficientMemoryError(LensError, MemoryError):
    """A model whose weights would not fit in the memory of the chosen device."""


class ShapeMismatchError(ValueError, AssertionError):
    """Operands whose shapes do not fit (a FactoredMatrix product, a non-square BA). A ValueError, and an
    AssertionError too because TransformerLens asserts on the same mistakes, so code catching either works."""


class InvalidArgumentError(ValueError, AssertionError):
    """A bad argument to one of TransformerLens's names (lens/compat): a ValueError, and an AssertionError
    because TransformerLens asserts there."""


class Cancelled(LensError):
    """The caller asked the work under way to stop (lens.guard)."""


class MemoryBudgetError(LensError, MemoryError):
    """Work that would materialise more memory than the caller's limit allows (lens.guard)."""
