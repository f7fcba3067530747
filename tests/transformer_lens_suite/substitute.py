"""A pytest plugin for run.py: `from_pretrained(name)` builds a small random model of the named kind,
with the same tokenizer (SmolLM2's, which ships with lens's packaged model), on both sides.

TransformerLens's tests load hub models; offline they cannot. With this, a test that checks a property
of any model (a cache equals a forward, left padding equals right, the KV cache equals no cache) runs on
both; a test that checks one model's numbers fails on TransformerLens too and is not counted.
SUITE_PACKAGE names the package whose HookedTransformer is patched ("transformer_lens" or "lens").
"""

from __future__ import annotations

import functools
import importlib
import os
import re

LLAMA_LIKE = ("llama", "mistral", "qwen", "smol", "gemma", "olmo", "phi")


@functools.lru_cache(maxsize=1)
def tokenizer():
    from lens.loading import weight_cache
    from lens.loading.registry import ALIASES
    path = ALIASES["smollm2-135m"].packaged_gguf()
    cached = weight_cache.load(path)
    if cached is None:  # the first load converts the GGUF and fills the cache
        import lens
        return lens.HookedTransformer.from_pretrained("smollm2-135m", device="cpu").tokenizer
    return cached[2]


def config_fields(name: str, kwargs: dict) -> dict:
    layers = re.search(r"(\d+)l\b", name.lower())
    fields = dict(n_layers=int(layers.group(1)) if layers else 2, d_model=64, d_head=16, n_ctx=1024,
                  d_vocab=len(tokenizer()), act_fn="gelu_new", normalization_type="LN", seed=0,
                  device=kwargs.get("device") or "cpu",
                  default_prepend_bos=kwargs.get("default_prepend_bos", True))
    if any(kind in name.lower() for kind in LLAMA_LIKE):
        fields |= dict(normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, act_fn="silu",
                       n_key_value_heads=2, final_rms=True)
    if "attn-only" in name.lower():
        fields |= dict(attn_only=True)
    return fields


def substitute(package: str) -> None:
    module = importlib.import_module(package)
    if not hasattr(module, "HookedTransformerConfig"):  # lens before issue 14: nothing to build a model from
        return
    model_class, config_class = module.HookedTransformer, module.HookedTransformerConfig

    def from_pretrained(cls, model_name: str, *args, **kwargs):
        model = cls(config_class(**config_fields(str(model_name), kwargs)), tokenizer=tokenizer(),
                    default_padding_side=kwargs.get("default_padding_side", "right"))
        return model.to(kwargs["device"]) if kwargs.get("device") else model

    model_class.from_pretrained = classmethod(from_pretrained)


substitute(os.environ.get("SUITE_PACKAGE", "transformer_lens"))
