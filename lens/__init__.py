"""lens: a hooked-transformer engine for mechanistic interpretability."""

from lens import data as data  # prompt sets: lens.data
from lens import patching as patching  # interventions: lens.patching
from lens.cache import ActivationCache
from lens.config import ModelConfig, RotaryConfig
from lens.data import PromptSet, Spread, make_dataset
from lens.errors import (
                         Cancelled,
                         CorruptCheckpointError,
                         HookWouldNotFireError,
                         InsufficientMemoryError,
                         LensError,
                         MemoryBudgetError,
                         ModelFileNotFoundError,
                         SequenceTooLongError,
                         TokenizationError,
                         UnknownHookError,
                         UnknownModelError,
                         UnsupportedModelError,
)
from lens.factored import FactoredMatrix
from lens.hooks import HookPoint, act_name
from lens.loading import DEFAULT_MODEL, list_models, supported_families
from lens.model.transformer import HookedTransformer, Output
from lens.sae import SAE, DictionaryError

get_act_name = act_name  # TransformerLens's name for it

__all__ = [
    "ActivationCache", "FactoredMatrix", "HookedTransformer", "HookPoint", "ModelConfig", "Output", "RotaryConfig",
    "act_name", "get_act_name", "list_models", "supported_families", "DEFAULT_MODEL", "LensError", "UnknownHookError",
    "HookWouldNotFireError", "UnknownModelError", "UnsupportedModelError", "CorruptCheckpointError",
    "ModelFileNotFoundError", "SequenceTooLongError", "TokenizationError", "InsufficientMemoryError",
    "PromptSet", "Spread", "make_dataset", "investigate", "MemoryBudgetError", "Cancelled", "SAE",
    "DictionaryError",
]


def investigate(model, prompt_set, metric="logit_diff", out_dir="lens-investigation", **options):
    """The standard battery on a prompt set, written up as Markdown with plots (lens/investigation.py)."""
    from lens.investigation import investigate as run
    return run(model, prompt_set, metric, out_dir, **options)
