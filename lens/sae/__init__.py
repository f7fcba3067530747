"""Dictionaries: SAELens-format sparse autoencoders and transcoders, spliced into a model.

    sae = lens.SAE.load("path/to/folder")          # cfg.json + sae_weights.safetensors
    model.add_sae(sae)                              # features: <hook>.hook_sae_acts_post
    _, cache = model.run_with_cache("Paris is", saes=[sae])

Analyses: reading (top_features, max_activating, selective_features), quality, attribution
(direct_attribution, feature_patch, ablate_features), steering (steer_feature, token_set_effect), training (train).
"""

from lens.sae.attribution import ablate_features, direct_attribution, feature_patch
from lens.sae.config import DictionaryError, SAEConfig, config_from_dict
from lens.sae.dictionary import HOOK_NAMES, SAE
from lens.sae.quality import quality
from lens.sae.reading import feature_acts, max_activating, selective_features, top_features
from lens.sae.splice import add_sae, attached, remove_sae, spliced
from lens.sae.steering import steer_feature, token_set_effect

__all__ = ["SAE", "SAEConfig", "DictionaryError", "HOOK_NAMES", "add_sae", "remove_sae", "attached", "spliced",
           "config_from_dict", "top_features", "max_activating", "selective_features", "feature_acts", "quality",
           "direct_attribution", "feature_patch", "ablate_features", "steer_feature", "token_set_effect"]
