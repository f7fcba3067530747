"""The converted-weights cache: a GGUF is dequantized and converted once, then loaded from safetensors.

An entry is keyed by the source file (resolved path, size, modification time) and the
converter version, so a changed file or converter never serves stale weights. Entries are
written to a temporary folder and renamed into place, so a crash leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from lens.config import ModelConfig

# Bump when a converter's output changes, to invalidate every cached entry.
CONVERTER_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("LENS_CACHE", Path.home() / ".cache" / "lens")) / "converted"


def cache_key(source: Path) -> str:
    stat = source.resolve().stat()
    ident = {"path": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "converter": CONVERTER_VERSION}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def load(source: Path, before_weights: Callable[[ModelConfig], None] = lambda cfg: None):
    """(ModelConfig, tensors, tokenizer) from the cache, or None on a miss or an unreadable entry.
    before_weights(cfg) runs before the weights are read (a budget check: its errors propagate)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    entry = cache_root() / cache_key(source)
    if not (entry / "complete").exists():
        return None
    try:
        cfg = ModelConfig.from_json((entry / "lens_config.json").read_text())
    except Exception:  # a damaged entry is rebuilt, never trusted
        shutil.rmtree(entry, ignore_errors=True)
        return None
    before_weights(cfg)
    try:
        tensors = load_file(entry / "weights.safetensors")
        tokenizer = AutoTokenizer.from_pretrained(entry / "tokenizer") if (entry / "tokenizer").exists() else None
    except Exception:  # a damaged entry is rebuilt, never trusted
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return cfg, tensors, tokenizer


def store(source: Path, cfg: ModelConfig, tensors: dict[str, torch.Tensor], tokenizer) -> None:
    from safetensors.torch import save_file

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    entry = root / cache_key(source)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "weights.safetensors")
        (tmp / "lens_config.json").write_text(cfg.to_json())
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "complete").write_text(str(source.resolve()))
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
