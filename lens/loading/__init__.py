"""Loading: resolve a name → read the HF checkpoint → map its config → convert its weights.

    alias ("smollm2-135m") → the GGUF its pip package ships, or its hub id
    local folder          → config.json + safetensors (+ tokenizer files)
    .gguf file            → dequantized through transformers, cached as safetensors
    anything else         → an HF hub id
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lens.config import ModelConfig
from lens.errors import InsufficientMemoryError, ModelFileNotFoundError, UnknownModelError
from lens.loading import checkpoints, weight_cache
from lens.loading.families import family_for, supported_families
from lens.loading.headers import regular_file
from lens.loading.processing import process_weights
from lens.loading.registry import ALIASES, DEFAULT_MODEL, list_models
from lens.tokens import detects_bos

__all__ = ["load_pretrained", "model_config", "list_models", "supported_families", "DEFAULT_MODEL"]

def model_config(hf_config, tokenizer=None) -> ModelConfig:
    """ModelConfig for an HF config (through its family's mapper); BOS default from the tokenizer."""
    cfg = family_for(hf_config.model_type).config(hf_config)
    if tokenizer is not None:
        cfg = dataclasses.replace(cfg, default_prepend_bos=detects_bos(tokenizer),
                                  bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                                  else cfg.bos_token_id)
    return cfg


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_path_like(name: str) -> bool:
    return name.endswith(".gguf") or name.startswith((".", "/", "~")) or name.count("/") > 1


def resolve(name_or_path: str) -> tuple[str, Path | str, str | None]:
    """(kind, location, hub_id): kind is 'gguf', 'folder' or 'hub'."""
    if name_or_path in ALIASES:
        alias = ALIASES[name_or_path]
        if alias.installed:
            return "gguf", alias.packaged_gguf(), alias.hub_id
        return "hub", alias.hub_id, alias.hub_id
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            regular_file(path)  # a FIFO or device would block the reader forever
        return ("gguf" if path.is_file() and path.suffix == ".gguf" else "folder"), path, None
    if _is_path_like(name_or_path):
        raise ModelFileNotFoundError(f"no such file or folder: {path}")
    if name_or_path.count("/") != 1:
        raise UnknownModelError(f"{name_or_path!r} is not a known model. Known aliases: {', '.join(ALIASES)}; "
                                f"or pass an HF hub id ('org/name'), a local HF folder, or a .gguf file.")
    return "hub", name_or_path, name_or_path


def _read(kind: str, location, before_weights: Callable[[ModelConfig], None]) -> tuple[ModelConfig, dict, object, bool]:
    """(cfg, lens tensors, tokenizer, served_from_cache). before_weights(cfg) runs before any weight is read."""
    def check(hf_config):
        before_weights(model_config(hf_config))

    if kind == "gguf":
        cached = weight_cache.load(location, before_weights)
        if cached is not None:
            return (*cached, True)
        ck = checkpoints.read_gguf(location, check)
    else:
        folder = checkpoints.download(location) if kind == "hub" else location
        ck = checkpoints.read_folder(folder, check)
    cfg = model_config(ck.hf_config, ck.tokenizer)
    tensors = family_for(ck.hf_config.model_type).convert(ck.state_dict, cfg)
    if kind == "gguf":
        weight_cache.store(location, cfg, tensors, ck.tokenizer)
    return cfg, tensors, ck.tokenizer, False


def _check_memory(cfg: ModelConfig, dtype: torch.dtype, device: str, max_bytes: int | None = None,
                  check_free: bool = True) -> None:
    need = cfg.n_params * torch.finfo(dtype).bits // 8
    if max_bytes is not None and need > max_bytes:
        raise InsufficientMemoryError(
            f"the weights need about {need / 2**20:,.1f} MiB in {str(dtype).removeprefix('torch.')}, more than the "
            f"model memory budget of {max_bytes / 2**20:,.1f} MiB. Load it in bfloat16, pick a smaller model, or "
            f"raise the budget.")
    if not check_free:
        return
    if str(device).startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free:
        raise InsufficientMemoryError(
            f"the weights need about {need / 2**30:.1f} GiB in {dtype} on {device}, but only {free / 2**30:.1f} "
            f"GiB are free. Use a smaller dtype (dtype=torch.bfloat16), another device, or a smaller model.")


def load_pretrained(name_or_path: str = DEFAULT_MODEL, *, device=None, dtype: torch.dtype = torch.float32,
                    fold_ln: bool = False, center_writing_weights: bool = False, center_unembed: bool = False,
                    fold_value_biases: bool = False, device_map: dict | str | None = None,
                    n_devices: int | None = None, max_memory: dict | None = None, offload_folder: str | None = None,
                    max_bytes: int | None = None):
    """See HookedTransformer.from_pretrained. max_bytes: refuse weights larger than this, checked from the
    config or file header before any weight is read."""
    from lens.model.transformer import HookedTransformer

    started = time.perf_counter()
    dispatched = device_map is not None or n_devices is not None
    if dispatched and device is not None:
        raise ValueError("pass device, or device_map/n_devices to split the model, not both")
    device = "cpu" if dispatched else device or _default_device()
    kind, location, hub_id = resolve(str(name_or_path))
    # a device map is planned against each device's memory by accelerate
    cfg, tensors, tokenizer, cached = _read(kind, location,
                                            lambda cfg: _check_memory(cfg, dtype, device, max_bytes, not dispatched))
    model = HookedTransformer(cfg, tokenizer=tokenizer, dtype=dtype, device=device)
    model.weights.load(tensors)
    model.eval()
    processing = process_weights(model, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                 center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    if dispatched:
        model.dispatch(device_map, n_devices, max_memory, offload_folder)
    model.load_info = {"name": str(name_or_path), "format": kind, "source": str(location), "hub_id": hub_id,
                       "from_cache": cached, "processing": processing,
                       "load_seconds": round(time.perf_counter() - started, 2)}
    return model
