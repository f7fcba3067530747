"""HookedTransformer: embed → blocks → final norm → unembed, with a named hook at every activation.

The class composes the components and holds the hook API. Loading lives in
lens/loading, caching in lens/cache, tokenization in lens/tokens.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lens import generation
from lens import tokens as tok
from lens.compat.config import HookedTransformerConfig
from lens.compat.model import TransformerLensMethods
from lens.config import ModelConfig
from lens.errors import HookWouldNotFireError, SequenceTooLongError
from lens.factored import CompositionKind, composition_scores, ov_circuit, qk_circuit
from lens.guard import check_cancelled
from lens.hooks import HookFn, HookPoint, HookRegistry, NameOrFilter
from lens.memory import check_forward
from lens.model.attention import ForwardContext
from lens.model.block import Block
from lens.model.embed import Embed, PosEmbed, Unembed
from lens.model.kv_cache import KVCache
from lens.model.norm import Norm
from lens.model.rotary import cos_sin, inverse_frequencies
from lens.model.weights import Weights
from lens.tokens import PaddingSide

ReturnType = Literal["logits", "loss", "both", None]
Processing = Literal["none", "transformer_lens"]


class Output(NamedTuple):
    logits: torch.Tensor  # [batch, pos, d_vocab]
    loss: torch.Tensor


def _stacked(name: str, doc: str):
    return property(lambda self: self.weights.head_view(name), doc=doc)


class HookedTransformer(TransformerLensMethods, nn.Module):
    def __init__(self, cfg: ModelConfig | HookedTransformerConfig | dict, tokenizer=None,
                 dtype: torch.dtype = torch.float32, device=None, default_padding_side: PaddingSide = "right"):
        """Empty weights for a ModelConfig (from_pretrained / from_config fill them); for TransformerLens's
        HookedTransformerConfig (or its dict), random weights as TransformerLens initialises them."""
        super().__init__()
        tl_cfg = HookedTransformerConfig.unwrap(cfg) if isinstance(cfg, (dict, HookedTransformerConfig)) else None
        if tl_cfg is not None:
            cfg, dtype, device = tl_cfg.to_model_config(), tl_cfg.dtype, tl_cfg.device
            default_padding_side = tl_cfg.default_padding_side
        if tokenizer is not None:  # special-token ids the config lacks (a config built by hand) come from it
            cfg = dataclasses.replace(cfg, **{f"{kind}_token_id": getattr(tokenizer, f"{kind}_token_id", None)
                                              for kind in ("bos", "eos", "pad")
                                              if getattr(cfg, f"{kind}_token_id") is None})
        self.cfg = cfg = dataclasses.replace(cfg)  # its own copy: it records the model's device
        self.tokenizer = tokenizer
        self.default_padding_side = default_padding_side
        if tokenizer is not None:  # as TransformerLens: the tokenizer's padding side is the default, and stays editable
            tokenizer.padding_side = default_padding_side
        self.weights = Weights(cfg, dtype=dtype, device=device)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positions == "learned":
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(Block(cfg, self.weights, i) for i in range(cfg.n_layers))
        self.ln_final = Norm(cfg, weights=self.weights, name="ln_final")
        self.embed, self.unembed = Embed(self.weights), Unembed(self.weights)
        if cfg.positions == "learned":
            self.pos_embed = PosEmbed(self.weights)
        self.rotary_configs = sorted({cfg.layer_rotary(i) for i in range(cfg.n_layers)}, key=repr) \
            if cfg.positions == "rotary" else []
        for i, rc in enumerate(self.rotary_configs):
            self.register_buffer(f"inv_freq_{i}", inverse_frequencies(rc, cfg.d_head).to(device), persistent=False)
        self.hook_dict: dict[str, HookPoint] = {n: m for n, m in self.named_modules() if isinstance(m, HookPoint)}
        self._hooks = HookRegistry(self.hook_dict, cfg.n_layers)
        self.load_info: dict = {}  # where the weights came from; set by the loader
        self.device_map: dict | None = None  # set by dispatch()
        self._sync_cfg_device()
        if tl_cfg is not None and tl_cfg.init_weights:
            self.weights.init_random(tl_cfg.seed or 0, std=tl_cfg.initializer_range)
        for flag in ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in"):
            if tl_cfg is not None and getattr(tl_cfg, flag):
                getattr(self, f"set_{flag}")(True)

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half(): keep cfg.device current
        super()._apply(fn, recurse)
        self._sync_cfg_device()
        return self

    # --- construction (implemented in lens.loading) ---------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device=None, dtype: torch.dtype = torch.float32,
                        processing: Processing = "none", fold_ln: bool | None = None,
                        center_writing_weights: bool | None = None, center_unembed: bool | None = None,
                        fold_value_biases: bool | None = None, refactor_factored_attn_matrices: bool = False,
                        device_map: dict | str | None = None, n_devices: int | None = None,
                        max_memory: dict | None = None, offload_folder: str | None = None,
                        max_bytes: int | None = None) -> HookedTransformer:
        """Load an alias (`lens.list_models()`), an HF hub id, a local HF folder or a .gguf file.

        device None = cuda when available; dtype float32 (default), bfloat16 or float16.
        Weight processing (see lens/loading/processing.py): processing="none" (lens's default) leaves the
        weights as the checkpoint has them, so hook values and logits equal HF's; "transformer_lens" turns
        on TransformerLens's from_pretrained defaults (fold_ln, center_writing_weights, center_unembed,
        fold_value_biases), so TransformerLens code prints TransformerLens's numbers. A flag given
        explicitly wins over the preset. To split a model over devices or offload blocks to CPU/disk,
        pass device_map (a dict or "auto" with max_memory), or n_devices; see dispatch(). n_devices=1
        on a machine without CUDA loads onto the CPU, as TransformerLens does. max_bytes refuses weights
        larger than that, checked from the config or file header before any weight is read."""
        from lens.loading import load_pretrained
        if processing not in ("none", "transformer_lens"):
            raise ValueError(f"processing must be 'none' or 'transformer_lens', not {processing!r}")
        preset = processing == "transformer_lens"
        flags = {name: preset if value is None else value for name, value in (
            ("fold_ln", fold_ln), ("center_writing_weights", center_writing_weights),
            ("center_unembed", center_unembed), ("fold_value_biases", fold_value_biases))}
        if n_devices == 1 and device_map is None:
            n_devices = None  # one device is the plain load
        model = load_pretrained(name_or_path, device=device, dtype=dtype, **flags, device_map=device_map,
                                n_devices=n_devices, max_memory=max_memory, offload_folder=offload_folder,
                                max_bytes=max_bytes)
        if refactor_factored_attn_matrices:
            model.process_weights(refactor_factored_attn_matrices=True)
        return model

    @classmethod
    def from_config(cls, cfg, seed: int = 0, dtype: torch.dtype = torch.float32, device=None,
                    tokenizer=None) -> "HookedTransformer":
        """Random weights (normal, std 0.02) for a ModelConfig or an HF config."""
        from lens.loading import model_config
        cfg = cfg if isinstance(cfg, ModelConfig) else model_config(cfg)
        model = cls(cfg, tokenizer=tokenizer, dtype=dtype, device=device)
        model.weights.init_random(seed)
        return model

    def dispatch(self, device_map: dict | str | None = None, n_devices: int | None = None,
                 max_memory: dict | None = None, offload_folder: str | None = None) -> HookedTransformer:
        """Split the blocks over devices, or offload some to CPU/disk, with accelerate's big-model
        dispatch (see lens/model/placement.py). Afterwards each block owns its parameters: edit
        them per block (`model.blocks[i].attn.W_Q`); the stacked `model.W_Q` is then a copy."""
        from lens.model.placement import dispatch
        return dispatch(self, device_map, n_devices, max_memory, offload_folder)

    def process_weights(self, fold_ln: bool = False, center_writing_weights: bool = False,
                        center_unembed: bool = False, fold_value_biases: bool = False,
                        refactor_factored_attn_matrices: bool = False) -> list[str]:
        """Apply TransformerLens's weight processing in place (what from_pretrained's flags do)."""
        from lens.loading.processing import process_weights
        done = process_weights(self, fold_ln, center_writing_weights, center_unembed, fold_value_biases,
                               refactor_factored_attn_matrices)
        self.load_info["processing"] = self.load_info.get("processing", []) + done
        return done

    # --- weights, as views (stacked over layers; per layer on model.blocks[i]) ------

    W_Q = _stacked("W_Q", "[n_layers, n_heads, d_model, d_head]")
    W_K = _stacked("W_K", "[n_layers, n_heads, d_model, d_head]; with GQA each kv head repeated (a copy)")
    W_V = _stacked("W_V", "[n_layers, n_heads, d_model, d_head]; with GQA each kv head repeated (a copy)")
    _W_K = _stacked("_W_K", "[n_layers, n_kv_heads, d_model, d_head]: the stored kv heads (a view)")
    _W_V = _stacked("_W_V", "[n_layers, n_kv_heads, d_model, d_head]: the stored kv heads (a view)")
    W_O = _stacked("W_O", "[n_layers, n_heads, d_head, d_model]")
    b_Q = _stacked("b_Q", "[n_layers, n_heads, d_head]")
    b_K = _stacked("b_K", "[n_layers, n_heads, d_head]; with GQA each kv head repeated")
    b_V = _stacked("b_V", "[n_layers, n_heads, d_head]; with GQA each kv head repeated")
    _b_K = _stacked("_b_K", "[n_layers, n_kv_heads, d_head]")
    _b_V = _stacked("_b_V", "[n_layers, n_kv_heads, d_head]")
    b_O = property(lambda self: self.weights.b_O, doc="[n_layers, d_model]")
    W_in = property(lambda self: self.weights.W_in, doc="[n_layers, d_model, d_mlp]")
    W_gate = property(lambda self: self.weights.W_gate, doc="[n_layers, d_model, d_mlp]")
    W_out = property(lambda self: self.weights.W_out, doc="[n_layers, d_mlp, d_model]")
    b_in = property(lambda self: self.weights.b_in, doc="[n_layers, d_mlp]")
    b_out = property(lambda self: self.weights.b_out, doc="[n_layers, d_model]")
    W_E = property(lambda self: self.weights.W_E, doc="[d_vocab, d_model]")
    W_pos = property(lambda self: self.weights.W_pos, doc="[n_ctx, d_model]")
    W_U = property(lambda self: self.weights.unembedding(), doc="[d_model, d_vocab]")
    b_U = property(lambda self: self.weights.b_U, doc="[d_vocab]")
    QK = property(lambda self: qk_circuit(self.W_Q, self._W_K),
                  doc="FactoredMatrix W_Q W_K^T [n_layers, n_heads, d_model, d_model], kv heads repeated per group")
    OV = property(lambda self: ov_circuit(self._W_V, self.W_O),
                  doc="FactoredMatrix W_V W_O [n_layers, n_heads, d_model, d_model], kv heads repeated per group")

    def all_composition_scores(self, mode: CompositionKind) -> torch.Tensor:
        """[n_layers, n_heads, n_layers, n_heads]: [l1, h1, l2, h2] scores how much earlier head (l1, h1)
        composes into the Q, K or V input of later head (l2, h2); zero unless l1 < l2 (see lens.factored)."""
        return composition_scores(self, mode)

    # --- hooks -------------------------------------------------------------------

    def add_hook(self, name: NameOrFilter, hook: HookFn, dir: str = "fwd", is_permanent: bool = False,
                 prepend: bool = False):
        """Attach `hook(activation, hook_point) -> activation | None` until reset_hooks()."""
        return self._hooks.add(name, hook, dir, permanent=is_permanent, prepend=prepend)

    def reset_hooks(self, including_permanent: bool = False) -> None:
        self._hooks.reset(including_permanent)

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=()):
        """Hooks attached for the duration of a with-block, removed on exit (also on error)."""
        with self._hooks.attached(fwd_hooks, bwd_hooks):
            yield self

    def run_with_hooks(self, input, *model_args, fwd_hooks=(), bwd_hooks=(), saes=None, **model_kwargs):
        """Forward with hooks attached for this call only. Backward hooks fire on a later .backward().
        saes: dictionaries spliced for this call (with the error term), so hooks can name their features."""
        with self.saes(saes), self._hooks.attached(fwd_hooks, bwd_hooks):
            return self(input, *model_args, **model_kwargs)

    def run_with_cache(self, input, *model_args, names_filter=None, device=None, remove_batch_dim=False,
                       incl_bwd=False, saes=None, **model_kwargs):
        """(output, ActivationCache). names_filter: a name, short name, list, or predicate; None = all
        hook points except the on-request ones (hook_result and the per-head input hooks).
        saes: dictionaries spliced for this call (with the error term); their features are cached too."""
        from lens.cache import run_with_cache
        with self.saes(saes):
            return run_with_cache(self, input, *model_args, names_filter=names_filter, device=device,
                                  remove_batch_dim=remove_batch_dim, incl_bwd=incl_bwd, **model_kwargs)

    # --- dictionaries (lens/sae) ---------------------------------------------------------

    def add_sae(self, sae, use_error_term: bool = True):
        """Splice a dictionary (lens.SAE) in at its hook; its features become hook points
        (`<hook>.hook_sae_acts_post`, ...). With the error term the outputs are unchanged until a
        feature is edited; without it the reconstruction replaces the activation. See lens/sae/splice.py."""
        from lens.sae.splice import add_sae
        return add_sae(self, sae, use_error_term)

    def remove_sae(self, sae_or_hook=None) -> None:
        """Remove a spliced dictionary (by object or hook name), or all of them (None)."""
        from lens.sae.splice import remove_sae
        remove_sae(self, sae_or_hook)

    reset_saes = remove_sae  # SAELens's name for removing them all

    @property
    def attached_saes(self) -> dict:
        """The spliced dictionaries by the hook they read."""
        from lens.sae.splice import attached
        return attached(self)

    def saes(self, saes=None, use_error_term: bool = True):
        """A context manager splicing dictionaries for a with-block (None: splice nothing)."""
        from lens.sae.splice import spliced
        return spliced(self, saes, use_error_term)

    def firing_hooks(self, start_at_layer: int | None = None, stop_at_layer: int | None = None) -> list[str]:
        """The hook points a forward with these bounds passes through."""
        start, stop = self._layer_range(start_at_layer, stop_at_layer)
        names = []
        for name, point in self.hook_dict.items():
            layer = point.layer()
            if layer is not None:
                fires = start <= layer < stop
            elif name.startswith("ln_final"):
                fires = stop == self.cfg.n_layers
            else:  # hook_embed, hook_pos_embed: only a forward from tokens embeds them
                fires = start_at_layer is None
            if fires:
                names.append(name)
        return names

    def _check_hooks_fire(self, start_at_layer, stop_at_layer) -> None:
        hooked = self._hooks.hooked()
        if not hooked or (start_at_layer is None and stop_at_layer is None):
            return
        silent = sorted(set(hooked) - set(self.firing_hooks(start_at_layer, stop_at_layer)))
        if silent:
            raise HookWouldNotFireError(
                f"hooks are attached to {silent}, which a forward with start_at_layer={start_at_layer}, "
                f"stop_at_layer={stop_at_layer} never reaches; remove them or widen the layer range")

    def _layer_range(self, start_at_layer, stop_at_layer) -> tuple[int, int]:
        n = self.cfg.n_layers
        start = 0 if start_at_layer is None else start_at_layer
        stop = n if stop_at_layer is None else stop_at_layer
        start, stop = start + n if start < 0 else start, stop + n if stop < 0 else stop
        if not (0 <= start <= stop <= n):
            raise ValueError(f"start_at_layer={start_at_layer}, stop_at_layer={stop_at_layer} do not give a "
                             f"layer range within 0..{n} (n_layers={n})")
        return start, stop

    # --- tokenization ------------------------------------------------------------

    def to_tokens(self, input: str | Sequence[str], prepend_bos: bool | None = None,
                  padding_side: str | None = None, move_to_device: bool = True, truncate: bool = True) -> torch.Tensor:
        """[batch, pos] token ids; lists are padded (right by default: `default_padding_side`).
        truncate: cut to the context window n_ctx (as TransformerLens); False leaves longer inputs whole."""
        tokens = tok.tokenize(self.tokenizer, self.cfg, input, prepend_bos, padding_side or self._padding_side())[0]
        if truncate:
            tokens = tokens[:, :self.cfg.n_ctx]
        return tokens.to(self.device) if move_to_device else tokens

    def _padding_side(self) -> PaddingSide:
        return getattr(self.tokenizer, "padding_side", None) or self.default_padding_side

    def to_string(self, tokens) -> str | list[str]:
        tokens = torch.as_tensor(tokens)
        tokenizer = tok.require_tokenizer(self.tokenizer)
        if tokens.dim() <= 1:
            return tokenizer.decode(tokens.tolist())
        return [tokenizer.decode(row.tolist()) for row in tokens]

    def to_str_tokens(self, input, prepend_bos: bool | None = None) -> list[str]:
        """Each token as its own string, e.g. ['The', ' E', 'iff', 'el', ...]; a list of strings or
        a batch of token rows gives one such list per item."""
        if isinstance(input, list) and input and isinstance(input[0], (str, list, torch.Tensor)):
            return [self.to_str_tokens(item, prepend_bos) for item in input]
        if isinstance(input, torch.Tensor) and input.dim() == 2 and input.shape[0] > 1:
            return [self.to_str_tokens(row, prepend_bos) for row in input]
        if isinstance(input, str):
            input = self.to_tokens(input, prepend_bos)[0]
        input = torch.as_tensor(input)
        if input.dim() == 2:
            if input.shape[0] != 1:
                raise ValueError(f"to_str_tokens takes one sequence, got a batch of {input.shape[0]}")
            input = input[0]
        return tok.str_tokens(self.tokenizer, input)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token; raises, naming the pieces, otherwise."""
        return tok.to_single_token(self.tokenizer, string)

    def get_token_position(self, single_token: str | int, input, mode: str = "first",
                           prepend_bos: bool | None = None) -> int:
        """Index of a token in a 1-sequence input ('first' or 'last' occurrence)."""
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        seq = self.to_tokens(input, prepend_bos)[0] if isinstance(input, str) else torch.as_tensor(input).flatten()
        hits = (seq == token).nonzero().flatten().tolist()
        if not hits:
            raise ValueError(f"token {token} ({self.tokenizer.decode([token])!r}) is not in the input")
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', not {mode!r}")
        return hits[0] if mode == "first" else hits[-1]

    # --- generation (lens/generation.py) -------------------------------------------

    generate = generation.generate
    generate_stream = generation.generate_stream

    # --- forward -----------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.weights.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.W_E.dtype

    def _tokens_and_mask(self, input, prepend_bos, padding_side, attention_mask):
        if isinstance(input, torch.Tensor):
            tokens = input[None] if input.dim() == 1 else input
            if tokens.dtype not in (torch.long, torch.int32, torch.int64):
                raise TypeError(f"a token tensor must hold integer ids, not {tokens.dtype} "
                                f"(pass a residual stream only with start_at_layer)")
            mask = attention_mask
        else:
            tokens, mask = tok.tokenize(self.tokenizer, self.cfg, input, prepend_bos,
                                        padding_side or self._padding_side())
            if attention_mask is not None:
                mask = attention_mask
        tokens = tokens.to(self.device)
        mask = None if mask is None else torch.as_tensor(mask, device=self.device)
        return tokens, mask

    def forward(self, input, return_type: ReturnType = "logits", prepend_bos: bool | None = None,
                padding_side: PaddingSide | None = None, attention_mask: torch.Tensor | None = None,
                start_at_layer: int | None = None, stop_at_layer: int | None = None,
                loss_per_token: bool = False, tokens: torch.Tensor | None = None,
                past_kv_cache: KVCache | None = None, saes=None):
        """input: a string, a list of strings (padded, masked), token ids [batch, pos], or, with
        start_at_layer, the residual stream [batch, pos, d_model] entering that layer (pass `tokens`
        too for a loss). Returns logits [batch, pos, d_vocab], the loss, Output(logits, loss), None,
        or, with stop_at_layer, the residual stream entering that layer.
        past_kv_cache: the input continues the sequences the cache holds (see lens.generation);
        attention_mask then covers the new positions only. With a layer range, only the layers run
        store keys and values; a later forward through a layer that missed positions is an error.
        saes: dictionaries spliced for this call only, with the error term (see add_sae)."""
        if saes is not None:
            with self.saes(saes):
                return self.forward(input, return_type, prepend_bos, padding_side, attention_mask, start_at_layer,
                                    stop_at_layer, loss_per_token, tokens, past_kv_cache)
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, not {return_type!r}")
        start, stop = self._layer_range(start_at_layer, stop_at_layer)
        self._check_hooks_fire(start_at_layer, stop_at_layer)
        if start_at_layer is None:
            tokens, mask = self._tokens_and_mask(input, prepend_bos, padding_side, attention_mask)
            resid = None
        else:
            resid = input
            mask = None if attention_mask is None else attention_mask.to(self.device)
        batch, n = (tokens.shape if resid is None else resid.shape[:2])
        offset = 0 if past_kv_cache is None else past_kv_cache.length
        if offset + n > self.cfg.n_ctx:
            raise SequenceTooLongError(f"the input is {offset + n} tokens; this model's context window (n_ctx) "
                                       f"is {self.cfg.n_ctx}. Shorten the prompt or split it.")
        check_forward(self, batch, n, offset, past_kv_cache, logits=return_type is not None and stop == self.cfg.n_layers)
        ctx = self._context(batch, n, mask, past_kv_cache)
        for handle in self._hooks.handles:  # the attached hooks only, not every hook point
            handle.point.ctx = ctx
        if resid is None:
            resid = self._embed(tokens, ctx.positions)
        for block in self.blocks[start:stop]:
            check_cancelled()  # a caller's guard may ask the work to stop (lens.guard)
            resid = block(resid, ctx)
        if past_kv_cache is not None:
            past_kv_cache.end_step(n)
        if stop < self.cfg.n_layers:
            return resid
        resid = resid.to(self.device)  # the last block may sit on another device
        if return_type is None:  # the final norm still runs, so its hooks fire (as in TransformerLens)
            self.ln_final(resid)
            return None
        logits = self.final_logits(resid)
        if return_type == "logits":
            return logits
        if tokens is None:
            raise ValueError("a loss needs the tokens: pass tokens=... together with start_at_layer")
        loss = next_token_loss(logits, tokens, mask, per_token=loss_per_token)
        return loss if return_type == "loss" else Output(logits, loss)

    def _context(self, batch: int, n: int, mask: torch.Tensor | None, kv_cache: KVCache | None) -> ForwardContext:
        offset = 0
        if kv_cache is not None:
            offset = kv_cache.length
            mask = kv_cache.start_step(n, mask)  # the mask of every position so far, or None
        elif mask is not None and bool(mask.all()):
            mask = None
        if mask is None:
            positions = torch.arange(offset, offset + n, device=self.device).expand(batch, n)
        else:  # padded rows count positions from their first real token
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -n:]
        ctx = ForwardContext(positions=positions, key_valid=None if mask is None else mask.bool(),
                             offset=offset, kv_cache=kv_cache)
        for i, rc in enumerate(self.rotary_configs):
            ctx.rotary[rc] = cos_sin(getattr(self, f"inv_freq_{i}"), positions, rc.style, self.dtype)
        return ctx

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        embed = self.weights.W_E[tokens]
        if self.cfg.embed_scale != 1.0:  # HF casts the scale to the weight dtype first (Gemma)
            embed = embed * torch.tensor(self.cfg.embed_scale, dtype=embed.dtype)
        resid = self.hook_embed(embed)
        if self.cfg.positions == "learned":
            resid = resid + self.hook_pos_embed(self.weights.W_pos[positions])
        return resid

    def final_logits(self, resid: torch.Tensor) -> torch.Tensor:
        """The final norm, the unembedding and any logit soft-cap of a residual stream [batch, pos, d_model]
        → logits (`model.unembed(x)` is the unembedding alone, as in TransformerLens)."""
        logits = self.unembed(self.ln_final(resid))
        if self.cfg.final_logit_softcap is not None:
            cap = self.cfg.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    def summary(self) -> str:
        from lens.loading.summary import summary
        return summary(self)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"HookedTransformer({c.model_type}: {c.n_layers} layers, d_model={c.d_model}, "
                f"{c.n_heads} heads ({c.n_kv_heads} kv), d_mlp={c.d_mlp}, d_vocab={c.d_vocab}, {self.dtype})")


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None,
                    per_token: bool = False) -> torch.Tensor:
    """Cross-entropy of predicting tokens[:, 1:]; padded targets are left out.
    per_token → [batch, pos - 1] (0 at padding); otherwise the mean over real targets."""
    losses = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), tokens[:, 1:].flatten(),
                             reduction="none").view(tokens.shape[0], -1)
    if mask is None:
        return losses if per_token else losses.mean()
    valid = (mask[:, 1:].bool() & mask[:, :-1].bool()).to(losses.dtype)
    losses = losses * valid
    return losses if per_token else losses.sum() / valid.sum()
