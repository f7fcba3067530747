"""Dictionaries: SAELens-format sparse autoencoders and transcoders, spliced into a model.

    sae = lens.SAE.load("path/to/folder")          # cfg.json + sae_weights.safetensors
    model.add_sae(sae)                              # features: <hook>.hook_sae_acts_post
    _, cache = model.run_with_cache("Paris is", saes=[sae])
"""

from lens.sae.config import DictionaryError, SAEConfig, config_from_dict
from lens.sae.dictionary import HOOK_NAMES, SAE
from lens.sae.splice import add_sae, attached, remove_sae, spliced

__all__ = ["SAE", "SAEConfig", "DictionaryError", "HOOK_NAMES", "add_sae", "remove_sae", "attached", "spliced",
           "config_from_dict"]
