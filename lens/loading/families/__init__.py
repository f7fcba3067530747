"""The supported families, by HF model_type."""

from lens.errors import UnsupportedModelError
from lens.loading.families import gpt2, gpt_neox, learned_positions, llama, parallel
from lens.loading.families.base import Family

FAMILIES: tuple[Family, ...] = (gpt2.FAMILY, learned_positions.GPT_NEO, learned_positions.OPT, gpt_neox.FAMILY, parallel.GPTJ, parallel.PHI, llama.LLAMA, llama.MISTRAL, llama.MIXTRAL, llama.QWEN2, llama.QWEN3, llama.OLMO2,
                                llama.PHI3, llama.GEMMA, llama.GEMMA2, llama.GEMMA3)
BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def family_for(model_type: str) -> Family:
    try:
        return BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(BY_MODEL_TYPE))}") from None


def supported_families() -> list[dict]:
    """Each family with its HF model_types and how lens was checked against HF."""
    return [{"family": f.name, "model_types": list(f.model_types), "verified": f.verified} for f in FAMILIES]
