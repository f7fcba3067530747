"""Interventions on a model: activation patching (batched, exact), attribution patching, path patching,
ablations, and the metrics they score.

    from lens.patching import patch, logit_diff
    result = patch(model, clean, corrupted, logit_diff(model, " John", " Mary"), what="heads")
    print(result.summary()); result.plot("plots/heads.png")

TransformerLens's function names and shapes (get_act_patch_resid_pre, ..., generic_activation_patch)
are here too, running on the same batched engine.
"""

from lens.patching.ablation import ablate, ablation_hooks
from lens.patching.activation import (
    TARGETS,
    generic_activation_patch,
    layer_head_dest_src_pos_pattern_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_vector_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_pos_patch_setter,
    patch,
)
from lens.patching.attribution import attribution_patch
from lens.patching.compat import (
    get_act_patch_attn_head_all_pos_every,
    get_act_patch_attn_head_by_pos_every,
    get_act_patch_attn_head_k_all_pos,
    get_act_patch_attn_head_k_by_pos,
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_head_out_by_pos,
    get_act_patch_attn_head_pattern_all_pos,
    get_act_patch_attn_head_pattern_by_pos,
    get_act_patch_attn_head_pattern_dest_src_pos,
    get_act_patch_attn_head_q_all_pos,
    get_act_patch_attn_head_q_by_pos,
    get_act_patch_attn_head_v_all_pos,
    get_act_patch_attn_head_v_by_pos,
    get_act_patch_attn_out,
    get_act_patch_block_every,
    get_act_patch_mlp_out,
    get_act_patch_resid_mid,
    get_act_patch_resid_pre,
)
from lens.patching.engine import Edit, Sweep, run_patches
from lens.patching.metrics import (
    Metric,
    Normalised,
    kl_to_clean,
    logit_diff,
    next_token_loss,
    normalise,
    probability,
)
from lens.patching.path import path_patch
from lens.patching.result import AblationResult, Hotspot, PatchResult

__all__ = [
    "TARGETS",
    "AblationResult",
    "Edit",
    "Hotspot",
    "Metric",
    "Normalised",
    "PatchResult",
    "Sweep",
    "ablate",
    "ablation_hooks",
    "attribution_patch",
    "generic_activation_patch",
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_out",
    "get_act_patch_block_every",
    "get_act_patch_mlp_out",
    "get_act_patch_resid_mid",
    "get_act_patch_resid_pre",
    "kl_to_clean",
    "layer_head_dest_src_pos_pattern_patch_setter",
    "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter",
    "layer_head_vector_patch_setter",
    "layer_pos_head_vector_patch_setter",
    "layer_pos_patch_setter",
    "logit_diff",
    "next_token_loss",
    "normalise",
    "patch",
    "path_patch",
    "probability",
    "run_patches",
]
