"""`SAE`: a sparse autoencoder or transcoder in SAELens's on-disk format, read without SAELens.

Each architecture's encode and decode follow SAELens 6 (sae_lens/saes/*.py) step by step, so the
numbers agree (tests/test_sae.py checks ≤ 1e-5 against SAELens itself):

    sae_in  = hook_sae_input(reshape(x)), normalised, minus b_dec if apply_b_dec_to_input
    pre     = hook_sae_acts_pre(sae_in @ W_enc + b_enc)          # [..., d_sae]
    acts    = hook_sae_acts_post(activation(pre))                # relu / topk / jumprelu / gated
    recons  = hook_sae_recons(acts @ W_dec + b_dec), un-normalised, reshaped back
    output  = hook_sae_output(recons)                           (+ x @ W_skip.T for skip transcoders)

A transcoder reads one hook (`hook_name`, e.g. hook_mlp_in) and writes another (`hook_name_out`,
e.g. hook_mlp_out); its b_dec has width d_out, so it is never subtracted from the input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lens.hooks import HookPoint
from lens.sae.config import CFG_FILE, WEIGHTS_FILE, DictionaryError, SAEConfig, config_from_dict, read_config

HOOK_NAMES = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
              "hook_sae_output")


def _shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The tensors each architecture stores, by SAELens's state_dict names."""
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.width_out), "b_dec": (cfg.width_out,)}
    if cfg.architecture == "gated":
        shapes |= {"b_gate": (cfg.d_sae,), "b_mag": (cfg.d_sae,), "r_mag": (cfg.d_sae,)}
    else:
        shapes["b_enc"] = (cfg.d_sae,)
    if "jumprelu" in cfg.architecture:
        shapes["threshold"] = (cfg.d_sae,)
    if "skip" in cfg.architecture:
        shapes["W_skip"] = (cfg.d_out, cfg.d_in)
    return shapes


class SAE(nn.Module):
    """A dictionary: `SAE.load(folder)`, `SAE.from_pretrained(release, sae_id)` (through SAELens),
    `encode`, `decode`, `forward`; `model.add_sae(sae)` splices it into a model (lens/sae/splice.py)."""

    def __init__(self, cfg: SAEConfig, tensors: dict[str, torch.Tensor] | None = None, device=None):
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise DictionaryError(f"dtype {cfg.dtype!r} in the config is not a torch dtype")
        shapes = _shapes(cfg)
        if tensors is None:  # zeros; SAE.random() fills them
            tensors = {name: torch.zeros(shape) for name, shape in shapes.items()}
        tensors = dict(tensors)
        if "topk_threshold" in tensors or ("scaling_factor" in tensors and not bool((tensors["scaling_factor"] == 1).all())):
            raise DictionaryError("the weights hold a BatchTopK training threshold or a fine-tuning scaling factor; "
                                  "save the dictionary for inference with SAELens (save_inference_model) first")
        tensors.pop("scaling_factor", None)
        missing, extra = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
        if missing or extra:
            raise DictionaryError(f"a {cfg.architecture} dictionary stores {sorted(shapes)}; these weights lack "
                                  f"{missing} and have unexpected {extra}")
        for name, shape in shapes.items():
            if tuple(tensors[name].shape) != shape:
                raise DictionaryError(f"{name} has shape {list(tensors[name].shape)}; d_in={cfg.d_in}, "
                                      f"d_sae={cfg.d_sae}, d_out={cfg.d_out} give {list(shape)}")
            self.register_parameter(name, nn.Parameter(tensors[name].to(device=device, dtype=dtype),
                                                       requires_grad=False))
        for name in HOOK_NAMES:
            setattr(self, name, HookPoint())
        self._norm_state = None  # the last encode's normalisation (SAELens keeps it on the module too)
        self._d_head = None  # hook_z dictionaries: the head width of the last encode's input

    # --- construction ------------------------------------------------------------

    @classmethod
    def load(cls, folder: str | Path, device=None, dtype: torch.dtype | None = None) -> SAE:
        """A SAELens folder (cfg.json + sae_weights.safetensors). Reads safetensors only, never pickles."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.is_dir():
            raise DictionaryError(f"{folder} is not a folder; a SAELens dictionary is a folder with {CFG_FILE} "
                                  f"and {WEIGHTS_FILE}")
        cfg = read_config(folder)
        if not (folder / WEIGHTS_FILE).exists():
            raise DictionaryError(f"{folder} has {CFG_FILE} but no {WEIGHTS_FILE}")
        if dtype is not None:
            cfg.dtype = str(dtype).removeprefix("torch.")
        return cls(cfg, load_file(folder / WEIGHTS_FILE), device=device)

    @classmethod
    def from_dict(cls, raw_cfg: dict, tensors: dict[str, torch.Tensor], device=None) -> SAE:
        return cls(config_from_dict(raw_cfg), tensors, device=device)

    @classmethod
    def from_sae_lens(cls, sae) -> SAE:
        """A copy of a loaded SAELens SAE (its cfg.to_dict() and state_dict())."""
        return cls(config_from_dict(sae.cfg.to_dict(), f"the SAELens {type(sae).__name__}"),
                   {k: v.detach().cpu() for k, v in sae.state_dict().items()})

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str, device=None) -> SAE:
        """A hub dictionary through SAELens's own registry and loaders (see lens/sae/hub.py)."""
        from lens.sae.hub import from_pretrained
        return from_pretrained(release, sae_id, device)

    @classmethod
    def random(cls, cfg: SAEConfig, seed: int = 0, device=None) -> SAE:
        """Random weights of the right shapes (for tests): decoder rows of norm ~1, small biases."""
        gen = torch.Generator().manual_seed(seed)
        tensors = {}
        for name, shape in _shapes(cfg).items():
            scale = {"W_enc": cfg.d_in ** -0.5, "W_dec": cfg.width_out ** -0.5, "W_skip": cfg.d_in ** -0.5}.get(name, 0.1)
            tensors[name] = torch.randn(shape, generator=gen) * scale
        if "threshold" in tensors:
            tensors["threshold"] = tensors["threshold"].abs()
        return cls(cfg, tensors, device=device)

    def save(self, folder: str | Path) -> Path:
        """Write SAELens's format (cfg.json + sae_weights.safetensors); SAELens's load_from_disk reads it."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS_FILE)
        import json
        (folder / CFG_FILE).write_text(json.dumps(self.cfg.to_sae_lens_dict(), indent=1))
        return folder

    # --- the computation ---------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.cfg.normalize_activations
        if norm == "constant_norm_rescale":
            coeff = self.cfg.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
            self._norm_state = coeff
            return x * coeff
        if norm == "layer_norm":  # SAELens: unbiased std, eps added to the std
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            self._norm_state = (mu, std)
            return x / (std + 1e-5)
        # "expected_average_only_in" and "covariance_whitening" are folded into the weights when SAELens
        # loads from the hub; at run time SAELens applies nothing, and neither does lens.
        return x

    def _unnormalise(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.cfg.normalize_activations
        if norm == "constant_norm_rescale":
            return x / self._norm_state
        if norm == "layer_norm":
            mu, std = self._norm_state
            return x * std + mu
        return x

    def process_in(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] (or [..., n_heads, d_head] for hook_z dictionaries) → the encoder's input."""
        x = x.to(self.dtype)
        if self.cfg.is_transcoder:
            return self._normalise(self.hook_sae_input(x))
        if self.cfg.reshape_activations == "hook_z":
            self._d_head = x.shape[-1]
            x = x.flatten(-2)
        x = self._normalise(self.hook_sae_input(x))
        return x - self.b_dec * self.cfg.apply_b_dec_to_input

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae] of an input [..., d_in]."""
        return self.encode_processed(self.process_in(x))

    def encode_processed(self, sae_in: torch.Tensor) -> torch.Tensor:
        arch = self.cfg.architecture
        if arch == "gated":
            active = (sae_in @ self.W_enc + self.b_gate > 0).to(self.dtype)
            pre = self.hook_sae_acts_pre(sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
            return self.hook_sae_acts_post(active * torch.relu(pre))
        pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)  # [..., d_sae]
        if arch in ("topk", "abstopk"):
            if arch == "topk" and self.cfg.rescale_acts_by_decoder_norm:
                pre = pre * self.W_dec.norm(dim=-1)
            ranked = pre.abs() if arch == "abstopk" else pre
            values, indices = torch.topk(ranked, k=self.cfg.k, dim=-1, sorted=False)
            values = pre.gather(-1, indices) if arch == "abstopk" else values.relu()
            acts = torch.zeros_like(pre).scatter(-1, indices, values)
        elif "jumprelu" in arch:
            acts = torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        else:  # standard and (relu) transcoders
            acts = torch.relu(pre)
        return self.hook_sae_acts_post(acts)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """The reconstruction [..., d_in] (transcoders: [..., d_out]) of feature activations [..., d_sae].
        With run-time normalisation, un-normalises with the last encode's statistics (as SAELens)."""
        if self.cfg.architecture == "topk" and self.cfg.rescale_acts_by_decoder_norm:
            acts = acts * (1 / self.W_dec.norm(dim=-1))
        recons = self.hook_sae_recons(acts @ self.W_dec + self.b_dec)
        if self.cfg.is_transcoder:  # SAELens's transcoders neither un-normalise nor reshape
            return recons
        recons = self._unnormalise(recons)
        if self.cfg.reshape_activations == "hook_z":
            recons = recons.unflatten(-1, (-1, self._d_head))
        return recons

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        """The skip connection x @ W_skip.T of skip transcoders (None for other dictionaries)."""
        return x.to(self.dtype) @ self.W_skip.T if "skip" in self.cfg.architecture else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)) (+ the skip connection): what SAELens's forward returns without an error term."""
        out = self.decode(self.encode(x))
        skip = self.skip(x)
        return self.hook_sae_output(out if skip is None else out + skip)

    def __repr__(self) -> str:
        c = self.cfg
        out = f" → {c.hook_name_out} (d_out={c.d_out})" if c.is_transcoder else ""
        return f"SAE({c.architecture}, {c.hook_name}{out}, d_in={c.d_in}, d_sae={c.d_sae}, {self.dtype})"
