"""lens: a hooked-transformer engine for mechanistic interpretability."""

import sys

# TransformerLens's module names first (lens.HookedTransformer, lens.utils, ...; see lens/compat), so that the
# class names bound below are what `from lens import HookedTransformer` gives, as in TransformerLens.
from lens import ActivationCache as _activation_cache_module  # noqa: F401
from lens import FactoredMatrix as _factored_matrix_module  # noqa: F401
from lens import HookedTransformer as _hooked_transformer_module  # noqa: F401
from lens import SVDInterpreter as _svd_interpreter_module  # noqa: F401
from lens import data as data  # prompt sets: lens.data
from lens import head_detector as head_detector
from lens import hook_points as hook_points
from lens import patching as patching  # interventions: lens.patching
from lens import utils as utils
from lens.compat import kv_cache as _kv_cache

sys.modules.setdefault("lens.cache.key_value_cache", _kv_cache)  # TransformerLens's module path for it
from lens.cache import ActivationCache
from lens.compat.config import HookedTransformerConfig
from lens.compat.svd_interpreter import SVDInterpreter
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
    "HookedTransformerConfig", "SVDInterpreter", "utils", "hook_points", "head_detector", "patching",
    "act_name", "get_act_name", "list_models", "supported_families", "DEFAULT_MODEL", "LensError", "UnknownHookError",
    "HookWouldNotFireError", "UnknownModelError", "UnsupportedModelError", "CorruptCheckpointError",
    "ModelFileNotFoundError", "SequenceTooLongError", "TokenizationError", "InsufficientMemoryError",
    "MemoryBudgetError", "Cancelled", "SAE", "DictionaryError", "PromptSet", "Spread", "make_dataset",
    "investigate",
]


def investigate(model, prompt_set, metric="logit_diff", out_dir="lens-investigation", **options):
    """The standard battery on a prompt set, written up as Markdown with plots (lens/investigation.py)."""
    from lens.investigation import investigate as run
    return run(model, prompt_set, metric, out_dir, **options)
