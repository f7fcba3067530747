"""HookedTransformer methods TransformerLens has and lens otherwise names differently (a mixin of it)."""

from __future__ import annotations

import torch

from lens.hooks import ON_REQUEST

# TransformerLens's use_* flags → the on-request hooks they turn on in a cache of everything.
FLAG_HOOKS = {"use_attn_result": ("hook_result",), "use_split_qkv_input": ("hook_q_input", "hook_k_input",
              "hook_v_input"), "use_hook_mlp_in": ("hook_mlp_in",), "use_attn_in": ("hook_attn_in",)}


class TransformerLensMethods:
    """In lens an on-request hook (hook_result, the per-head inputs, hook_mlp_in) fires whenever a hook is
    attached to it; TransformerLens's use_* flags additionally put it in a cache of everything."""

    def cached_by_default(self, suffix: str) -> bool:
        return suffix not in ON_REQUEST or suffix in self.__dict__.setdefault("_on_request", set())

    def _set_flag(self, flag: str, on: bool) -> None:
        hooks = self.__dict__.setdefault("_on_request", set())
        hooks.difference_update(FLAG_HOOKS[flag])
        if on:
            hooks.update(FLAG_HOOKS[flag])

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Cache hook_result ([batch, pos, n_heads, d_model]) in run_with_cache's default names."""
        self._set_flag("use_attn_result", use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        self._set_flag("use_split_qkv_input", use_split_qkv_input)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        self._set_flag("use_hook_mlp_in", use_hook_mlp_in)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        if use_attn_in and "hook_q_input" in self.__dict__.get("_on_request", ()):
            raise ValueError("use_attn_in and use_split_qkv_input are exclusive in TransformerLens; turn one off")
        self._set_flag("use_attn_in", use_attn_in)

    @classmethod
    def from_pretrained_no_processing(cls, model_name: str, **kwargs):
        """from_pretrained with every weight-processing flag off (lens's default)."""
        flags = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases",
                 "refactor_factored_attn_matrices")
        return cls.from_pretrained(model_name, **{flag: False for flag in flags} | kwargs)

    def remove_all_hook_fns(self, direction: str = "both", including_permanent: bool = False, level=None) -> None:
        if direction not in ("fwd", "bwd", "both"):
            raise ValueError(f"direction must be 'fwd', 'bwd' or 'both', not {direction!r}")
        self._hooks.reset(including_permanent, None if direction == "both" else direction)

    def add_perma_hook(self, name, hook, dir: str = "fwd"):
        """A hook that reset_hooks() leaves in place (reset_hooks(including_permanent=True) removes it)."""
        return self.add_hook(name, hook, dir=dir, is_permanent=True)

    def hook_points(self):
        return list(self.hook_dict.values())

    @property
    def mod_dict(self) -> dict:
        return dict(self.named_modules())

    def input_to_embed(self, input, prepend_bos=None, padding_side=None, attention_mask=None, past_kv_cache=None):
        """(residual entering block 0 [batch, pos, d_model], tokens, None, attention_mask or None)."""
        tokens, mask = self._tokens_and_mask(input, prepend_bos, padding_side, attention_mask)
        ctx = self._context(tokens.shape[0], tokens.shape[1], mask, past_kv_cache)
        return self._embed(tokens, ctx.positions), tokens, None, mask

    def tokens_to_residual_directions(self, tokens) -> torch.Tensor:
        """The unembedding direction W_U[:, token] [d_model] of a token (string or id), or [..., d_model]."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        return self.W_U[:, torch.as_tensor(tokens, device=self.W_U.device)].movedim(0, -1)

    def to_single_str_token(self, int_token: int) -> str:
        return self.to_str_tokens(torch.tensor([int_token]))[0]

    def all_head_labels(self) -> list[str]:
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True):
        """[d_model] the biases written to the residual before `layer` (its attention's too with mlp_input)."""
        total = torch.zeros(self.cfg.d_model, device=self.device, dtype=self.dtype)
        for i in range(layer):
            total = total + self.b_O[i] + (self.b_out[i] if include_mlp_biases else 0)
        if mlp_input:
            total = total + self.b_O[layer]
        return total

    def _sync_cfg_device(self) -> None:
        object.__setattr__(self.cfg, "_device", self.device)
