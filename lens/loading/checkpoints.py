"""Reading HF checkpoints: a local folder (as save_pretrained writes it), a hub id, or a GGUF file.

Each reader returns a `Checkpoint` of the HF config, the HF state dict and the tokenizer
(or None). Nothing is unpickled: safetensors, GGUF, or torch.load(weights_only=True).
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lens.errors import CorruptCheckpointError, ModelFileNotFoundError, UnknownModelError, UnsupportedModelError
from lens.loading.families import family_for
from lens.loading.headers import check_folder, gguf_params, regular_file, safetensors_params


@dataclass
class HFCheckpoint:
    hf_config: object  # transformers.PretrainedConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: object | None


def read_folder(folder: Path, before_weights: Callable[[object], None] = lambda hf_config: None) -> HFCheckpoint:
    """before_weights(hf_config) runs after the config is read and before any weight is (a budget check)."""
    from transformers import AutoConfig

    if not (folder / "config.json").exists():
        raise ModelFileNotFoundError(f"{folder} has no config.json: not a model folder as save_pretrained writes it")
    check_folder(folder)  # a FIFO or device among its files would block the readers forever
    hf_config = AutoConfig.from_pretrained(folder)
    family_for(hf_config.model_type)  # an unsupported architecture fails before its weights are read
    before_weights(hf_config)
    return HFCheckpoint(hf_config, read_weights(folder), read_tokenizer(folder))


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelFileNotFoundError(f"{folder} has no *.safetensors or pytorch_model*.bin weights")
    state_dict = {}
    for file in files:
        regular_file(file)
        try:
            if file.suffix == ".safetensors":
                safetensors_params(file)  # its header, checked before the library allocates anything
                state_dict |= load_file(file)
            else:
                state_dict |= torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CorruptCheckpointError(
                f"{file} is a pickle that holds more than plain tensors, and lens never unpickles such objects "
                f"(unpickling can run any code the file carries). If you trust the file, convert it to "
                f"safetensors once, outside lens: python -c \"import torch; from safetensors.torch import "
                f"save_file; save_file(torch.load('{file.name}', weights_only=False), 'model.safetensors')\" "
                f"(for a model's state dict; nested objects need their tensors pulled out first).") from err
        except (SafetensorError, RuntimeError, OSError, ValueError) as err:
            raise CorruptCheckpointError(f"cannot read weights file {file}: {err}") from err
    return state_dict


def read_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / n).exists() for n in names):
        return None
    return AutoTokenizer.from_pretrained(folder)


def hub_timeout() -> float:
    """Seconds a hub download may take before the load gives up (LENS_HUB_TIMEOUT, default 600)."""
    return float(os.environ.get("LENS_HUB_TIMEOUT", "600"))


def download(hub_id: str) -> Path:
    """Fetch a hub checkpoint's config, tokenizer and safetensors into the HF cache. A hub that never
    answers fails the load after hub_timeout() seconds (the download thread is left to end on its own)."""
    from huggingface_hub import snapshot_download

    timeout, outcome = hub_timeout(), {}

    def fetch():
        try:
            outcome["path"] = snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*",
                                                                        "*.txt"])
        except Exception as err:  # noqa: BLE001 - handed to the loading thread below
            outcome["error"] = err
    thread = threading.Thread(target=fetch, name="lens-hub", daemon=True)  # daemon: a hung one never blocks exit
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise UnknownModelError(f"the HF hub did not deliver {hub_id!r} within {timeout:.0f} s (LENS_HUB_TIMEOUT); "
                                f"check the network, or load a local HF folder or a .gguf file")
    if "error" in outcome:  # offline, private, or no such repository: all mean "cannot load this name"
        err = outcome["error"]
        from lens.loading.registry import ALIASES
        raise UnknownModelError(
            f"{hub_id!r} is not a registry alias or a local path, and the HF hub could not provide it "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            f"Known aliases: {', '.join(ALIASES)}; or pass a local HF folder or a .gguf file.") from err
    return Path(outcome["path"])


def read_gguf(path: Path, before_weights: Callable[[object], None] = lambda hf_config: None) -> HFCheckpoint:
    """Dequantize a GGUF file through transformers (it maps GGUF names and un-permutes Q/K).
    before_weights(hf_config) runs after the config is read and before any weight is."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_params(path)  # counts and sizes bounded by the file, before gguf's own reader walks it
    check_gguf_header(path)
    folder, name = str(path.parent), path.name
    transformers_log = logging.getLogger("transformers")
    level = transformers_log.level
    transformers_log.setLevel(logging.ERROR)  # its per-tensor dequantization warnings, for this read only
    try:
        try:
            hf_config = AutoConfig.from_pretrained(folder, gguf_file=name)
        except ValueError as err:  # transformers cannot map this GGUF architecture at all
            raise UnsupportedModelError(f"{path}: {err}") from err
        family_for(hf_config.model_type)  # an unsupported architecture fails before dequantizing
        before_weights(hf_config)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except (ValueError, KeyError, OSError) as err:
            raise CorruptCheckpointError(f"cannot read GGUF file {path}: {err}") from err
    finally:
        transformers_log.setLevel(level)
    return HFCheckpoint(hf_config, hf_model.state_dict(), tokenizer)


def check_gguf_header(path: Path) -> None:
    """A quick read of the whole file's structure, so a truncated or foreign file fails clearly."""
    from gguf import GGUFReader

    try:
        GGUFReader(path)
    except Exception as err:  # the reader raises ValueError, struct.error, IndexError... on bad bytes
        raise CorruptCheckpointError(f"{path} is not a readable GGUF file: {type(err).__name__}: {err}") from err

