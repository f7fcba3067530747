"""TransformerLens's `head_detector` module under lens's name; see lens/compat/head_detector.py."""

from lens.compat.head_detector import (  # noqa: F401
    HEAD_NAMES,
    ErrorMeasure,
    HeadName,
    compute_head_attention_similarity_score,
    detect_head,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
    get_supported_heads,
)
