"""Reading HF checkpoints: a local folder (as save_pretrained writes it), a hub id, or a GGUF file.

Each reader returns a `Checkpoint` of the HF config, the HF state dict and the tokenizer
(or None). Nothing is unpickled: safetensors, GGUF, or torch.load(weights_only=True).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lens.errors import CorruptCheckpointError, ModelFileNotFoundError, UnknownModelError, UnsupportedModelError
from lens.loading.families import family_for


@dataclass
class HFCheckpoint:
    hf_config: object  # transformers.PretrainedConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: object | None


def read_folder(folder: Path) -> HFCheckpoint:
    from transformers import AutoConfig

    if not (folder / "config.json").exists():
        raise ModelFileNotFoundError(f"{folder} has no config.json: not a model folder as save_pretrained writes it")
    hf_config = AutoConfig.from_pretrained(folder)
    family_for(hf_config.model_type)  # an unsupported architecture fails before its weights are read
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
        try:
            if file.suffix == ".safetensors":
                state_dict |= load_file(file)
            else:
                state_dict |= torch.load(file, map_location="cpu", weights_only=True)
        except (SafetensorError, RuntimeError, OSError, ValueError) as err:
            raise CorruptCheckpointError(f"cannot read weights file {file}: {err}") from err
    return state_dict


def read_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / n).exists() for n in names):
        return None
    return AutoTokenizer.from_pretrained(folder)


def download(hub_id: str) -> Path:
    """Fetch a hub checkpoint's config, tokenizer and safetensors into the HF cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.txt"]))
    except Exception as err:  # offline, private, or no such repository: all mean "cannot load this name"
        from lens.loading.registry import ALIASES
        raise UnknownModelError(
            f"{hub_id!r} is not a registry alias or a local path, and the HF hub could not provide it "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            f"Known aliases: {', '.join(ALIASES)}; or pass a local HF folder or a .gguf file.") from err


def read_gguf(path: Path) -> HFCheckpoint:
    """Dequantize a GGUF file through transformers (it maps GGUF names and un-permutes Q/K)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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

