"""TransformerLens's key/value cache names for lens's KVCache (`init_cache`, `freeze`, `unfreeze`), also
importable as TransformerLens has them: `from lens.cache.key_value_cache import TransformerLensKeyValueCache`."""

from lens.model.kv_cache import KVCache

TransformerLensKeyValueCache = KVCache
HookedTransformerKeyValueCache = KVCache  # TransformerLens 2.x's name

__all__ = ["TransformerLensKeyValueCache", "HookedTransformerKeyValueCache"]
