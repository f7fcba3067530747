"""Hub dictionaries through SAELens's own registry (pretrained_saes.yaml) and loaders.

An optional path: it needs `sae_lens` installed and the Hugging Face hub reachable. lens never
downloads dictionaries itself; it asks SAELens, then copies the loaded SAE into a lens.SAE
(SAELens folds any `expected_average_only_in` scaling into the weights on the way).
"""

from __future__ import annotations

import difflib

from lens.sae.config import DictionaryError


def _directory():
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError as e:
        raise DictionaryError(f"loading a dictionary from the hub needs SAELens (pip install sae-lens), which is "
                              f"not importable here ({e}); or load a local SAELens folder with SAE.load(path)") from e
    return get_pretrained_saes_directory()


def releases(model_name: str | None = None) -> dict[str, list[str]]:
    """SAELens's registered releases (→ their dictionary ids), optionally those made for one model."""
    return {name: list(r.saes_map) for name, r in _directory().items()
            if model_name is None or model_name in (r.model, r.model.split("/")[-1])}


def from_pretrained(release: str, sae_id: str, device=None):
    from lens.sae.dictionary import SAE

    directory = _directory()
    if release not in directory:
        near = difflib.get_close_matches(release, list(directory), n=5, cutoff=0.4)
        raise DictionaryError(f"SAELens has no release {release!r}. Nearest: {', '.join(near) or 'none'} "
                              f"(lens.sae.hub.releases() lists them)")
    ids = list(directory[release].saes_map)
    if sae_id not in ids:
        near = difflib.get_close_matches(sae_id, ids, n=5, cutoff=0.4) or ids[:5]
        raise DictionaryError(f"release {release!r} has no dictionary {sae_id!r}; e.g. {', '.join(near)}")
    from sae_lens import SAE as SAELensSAE
    try:
        loaded = SAELensSAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as e:  # offline, unreachable, gated repo, ...: say which and what to do instead
        raise DictionaryError(
            f"SAELens could not fetch {release}/{sae_id} from the Hugging Face hub "
            f"({type(e).__name__}: {str(e)[:200]}). The hub may be unreachable or offline (HF_HUB_OFFLINE) here; "
            f"download the folder elsewhere and load it with SAE.load(path), or train one (lens.sae.train)") from e
    sae = SAE.from_sae_lens(loaded)
    return sae if device is None else sae.to(device)
