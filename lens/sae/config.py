"""The configuration of a dictionary (SAE or transcoder), read from SAELens's `cfg.json`.

SAELens 6 writes the architecture's own fields (`d_in`, `d_sae`, `architecture`, `k`, `d_out`,
`apply_b_dec_to_input`, `normalize_activations`, `reshape_activations`, `dtype`) at the top level and
how to use it (`hook_name`, `hook_head_index`, `hook_name_out`, `model_name`, ...) under `metadata`.
Configs written before SAELens 6 keep the metadata at the top level and call the hook `hook_point`;
both are read (the renames follow sae_lens.loading.pretrained_sae_loaders.handle_pre_6_0_config).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

from lens.errors import LensError

Architecture = Literal["standard", "topk", "abstopk", "jumprelu", "gated", "transcoder", "skip_transcoder",
                       "jumprelu_transcoder", "jumprelu_skip_transcoder"]
Normalization = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm",
                        "covariance_whitening"]
Reshape = Literal["none", "hook_z"]

TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"


class DictionaryError(LensError, ValueError):
    """A dictionary that cannot be read, or that does not fit the model it is spliced into."""


@dataclass
class SAEConfig:
    architecture: Architecture
    d_in: int
    d_sae: int
    hook_name: str  # where the dictionary reads (TransformerLens names, e.g. blocks.8.hook_resid_post)
    d_out: int | None = None  # transcoders: the width of what they write
    hook_name_out: str | None = None  # transcoders: where they write (e.g. blocks.8.hook_mlp_out)
    hook_head_index: int | None = None  # a per-head hook (q/k/v/z) read at one head
    apply_b_dec_to_input: bool = True
    normalize_activations: Normalization = "none"
    reshape_activations: Reshape = "none"
    k: int | None = None  # topk / abstopk
    rescale_acts_by_decoder_norm: bool = False  # topk: rank and decode as if W_dec rows had norm 1
    dtype: str = "float32"
    model_name: str | None = None
    metadata: dict = field(default_factory=dict)  # everything else SAELens recorded

    @property
    def is_transcoder(self) -> bool:
        return self.architecture in TRANSCODERS

    @property
    def out_hook(self) -> str:
        return self.hook_name_out if self.is_transcoder and self.hook_name_out else self.hook_name

    @property
    def width_out(self) -> int:
        return self.d_out if self.is_transcoder else self.d_in

    def to_sae_lens_dict(self) -> dict:
        """The cfg.json SAELens 6 writes for this dictionary."""
        top = {k: v for k, v in asdict(self).items()
               if k not in ("hook_name", "hook_name_out", "hook_head_index", "model_name", "metadata")}
        if not self.is_transcoder:
            top.pop("d_out")
        if self.architecture not in ("topk", "abstopk"):
            top.pop("k"), top.pop("rescale_acts_by_decoder_norm")
        metadata = {**self.metadata, "hook_name": self.hook_name, "hook_head_index": self.hook_head_index,
                    "model_name": self.model_name, "sae_lens_version": self.metadata.get("sae_lens_version", "6.0.0")}
        if self.hook_name_out:
            metadata["hook_name_out"] = self.hook_name_out
        return {**top, "device": "cpu", "metadata": metadata}


def _choice(value, allowed, what: str):
    if value not in get_args(allowed):
        raise DictionaryError(f"{what}={value!r} is not supported; valid: {', '.join(get_args(allowed))}")
    return value


def config_from_dict(raw: dict, source: str = "the config") -> SAEConfig:
    """An SAEConfig from a SAELens cfg.json dict (SAELens 6, or the pre-6 layout)."""
    meta = dict(raw.get("metadata") or {})
    flat = {**raw, **meta}
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}
    flat = {renames.get(k, k): v for k, v in flat.items()}
    architecture = flat.get("architecture", "standard")
    kwargs = flat.get("activation_fn_kwargs") or {}
    if flat.get("activation_fn", flat.get("activation_fn_str")) == "topk" and kwargs.get("k") is not None:
        architecture, flat["k"] = "topk", kwargs["k"]  # pre-6 TopK configs
    if architecture == "batchtopk":
        raise DictionaryError(
            f"{source} is a BatchTopK *training* config: its batch-level top-k has no per-token inference form. "
            f"SAELens saves BatchTopK SAEs for inference as JumpReLU (the learned threshold); save it with "
            f"save_inference_model() and load that folder")
    _choice(architecture, Architecture, f"architecture in {source}")
    missing = [k for k in ("d_in", "d_sae", "hook_name") if flat.get(k) is None]
    if missing:
        raise DictionaryError(f"{source} lacks {missing}; a SAELens cfg.json has d_in, d_sae and metadata.hook_name")
    norm = flat.get("normalize_activations") or "none"
    if isinstance(norm, bool):  # pre-6: True meant the April 2024 scaling
        norm = "expected_average_only_in" if norm else "none"
    hook = flat["hook_name"]
    # pre-6 configs had no field and reshaped every hook_z dictionary
    reshape = flat.get("reshape_activations") or ("hook_z" if "hook_z" in hook and "reshape_activations" not in flat
                                                  else "none")
    cfg = SAEConfig(
        architecture=architecture, d_in=int(flat["d_in"]), d_sae=int(flat["d_sae"]), hook_name=hook,
        d_out=int(flat["d_out"]) if architecture in TRANSCODERS and flat.get("d_out") is not None else None,
        hook_name_out=flat.get("hook_name_out"), hook_head_index=flat.get("hook_head_index"),
        apply_b_dec_to_input=bool(flat.get("apply_b_dec_to_input", architecture not in TRANSCODERS)),
        normalize_activations=_choice(norm, Normalization, f"normalize_activations in {source}"),
        reshape_activations=_choice(reshape, Reshape, f"reshape_activations in {source}"),
        k=int(flat["k"]) if architecture in ("topk", "abstopk") else None,
        rescale_acts_by_decoder_norm=bool(flat.get("rescale_acts_by_decoder_norm", False)),
        dtype=str(flat.get("dtype") or "float32").removeprefix("torch."), model_name=flat.get("model_name"),
        metadata={k: v for k, v in meta.items() if k not in ("hook_name", "hook_name_out", "hook_head_index",
                                                           "model_name")})
    if cfg.is_transcoder and cfg.d_out is None:
        raise DictionaryError(f"{source} is a {architecture} but has no d_out")
    if cfg.is_transcoder and cfg.apply_b_dec_to_input:
        raise DictionaryError(f"{source}: apply_b_dec_to_input is not defined for transcoders (b_dec has width d_out)")
    if architecture in ("topk", "abstopk") and "k" not in flat:
        raise DictionaryError(f"{source} is a {architecture} SAE without k")
    return cfg


def read_config(folder: Path) -> SAEConfig:
    path = Path(folder) / CFG_FILE
    if not path.exists():
        raise DictionaryError(f"{folder} has no {CFG_FILE}: a SAELens dictionary is a folder with {CFG_FILE} "
                              f"and {WEIGHTS_FILE}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DictionaryError(f"{path} is not valid JSON: {e}") from e
    return config_from_dict(raw, str(path))
