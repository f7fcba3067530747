"""Tools about models: which exist, loading one, what it is, how it tokenizes, releasing memory."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens import list_models as lens_list_models
from lens import tokens as tok
from mcp_server.schemas import (
    Detail,
    ModelRef,
    Part,
    TokenWindow,
    ToolResult,
    token_window,
)
from mcp_server.state import State, mib, state_of
from mcp_server.tools.annotations import LOADING, READ_ONLY, RELEASING


class KnownModel(Part):
    alias: str
    hub_id: str
    description: str
    installed: bool


class LoadedEntry(Part):
    handle: str
    source: str
    memory_mib: float
    current: bool


class ModelList(Part):
    known: list[KnownModel]
    loaded: list[LoadedEntry]
    default: str
    interpretation: str


def _loaded(state: State) -> list[LoadedEntry]:
    return [LoadedEntry(handle=m.handle, source=m.source, memory_mib=round(m.nbytes / 2**20, 1),
                        current=m.handle == state.current) for m in state.models.values()]


def list_models(ctx: Context) -> ModelList:
    """The models the server can load (aliases; installed or not) and the loaded ones, by handle."""
    state = state_of(ctx)
    known = [KnownModel(**{k: m[k] for k in ("alias", "hub_id", "description", "installed")})
             for m in lens_list_models()]
    known += [KnownModel(alias=name, hub_id="", description="registered in memory", installed=True)
              for name in state.registered]
    loaded = _loaded(state)
    return ModelList(known=known, loaded=loaded, default=state.settings.default_model, interpretation=(
        f"{sum(k.installed for k in known)} of {len(known)} known models are installed; "
        f"{len(loaded)} loaded ({', '.join(m.handle for m in loaded) or 'none'})"))


class ModelInfo(ToolResult):
    source: str
    family: str = Field(description="the HF model_type")
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    dtype: str
    device: str
    processing: list[str] = Field(description="weight processing applied (fold_ln, ...)")
    prepends_bos: bool = Field(description="whether prompts get BOS prepended, as the model's tokenizer does")
    memory_mib: float
    hook_points: list[str] = Field(description="the hook names, with {i} for the layer")
    summary: str


def _info(state: State, entry, interpretation: str) -> ModelInfo:
    model, cfg = entry.model, entry.model.cfg
    hooks = sorted({re.sub(r"blocks\.\d+\.", "blocks.{i}.", name) for name in model.hook_dict})
    return ModelInfo(
        model=entry.handle, source=entry.source, family=cfg.model_type, n_layers=cfg.n_layers, d_model=cfg.d_model,
        n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx, dtype=str(model.dtype).removeprefix("torch."), device=str(model.device),
        processing=list(model.load_info.get("processing", [])), prepends_bos=cfg.default_prepend_bos,
        memory_mib=round(entry.nbytes / 2**20, 1), hook_points=hooks, summary=model.summary(),
        interpretation=interpretation)


def load_model(
    ctx: Context,
    name: Annotated[str | None, Field(max_length=1000, description=(
        "alias (list_models), HF folder or .gguf file; default: the server's default"))] = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
) -> ModelInfo:
    """Load a model (or return it if loaded) and make it current; its handle, shape and hook names.
    TransformerLens's processing flags, off: activations equal HF's."""
    state = state_of(ctx)
    entry, fresh = state.load(name, dtype, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                              center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    state.make_current(entry)
    cfg = entry.model.cfg
    seconds = entry.model.load_info.get("load_seconds")
    how = (f"loaded in {seconds} s" if seconds is not None else "registered in memory") if fresh else "already loaded"
    return _info(state, entry, f"{entry.handle}: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, "
                               f"{cfg.n_params / 1e6:.0f}M parameters, {mib(entry.nbytes)} ({how})")


def model_info(ctx: Context, model: ModelRef = None) -> ModelInfo:
    """A model's shape, dtype, weight processing and hook names."""
    state = state_of(ctx)
    with state.using(model) as entry:
        cfg = entry.model.cfg
        return _info(state, entry, f"{entry.handle} ({cfg.model_type}): {cfg.n_layers} layers, {cfg.n_heads} heads "
                                   f"of d_head {cfg.d_head}, context {cfg.n_ctx} tokens")


class AnswerCheck(Part):
    text: str
    single_token: bool
    ids: list[int]
    pieces: list[str] = Field(description="how the text splits into tokens")


class Tokenization(ToolResult):
    tokens: TokenWindow
    ids: list[int] = Field(description="token ids aligned with tokens.str_tokens")
    answers: list[AnswerCheck]


def tokenize(
    ctx: Context,
    text: Annotated[str, Field(max_length=50_000)],
    answers: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(
        max_length=50, description="answers to check for being one token (' Paris')")] = (),
    detail: Detail = False,
    model: ModelRef = None,
) -> Tokenization:
    """Tokens and positions as the model sees the text (BOS included), and whether answers are
    single tokens. Use before choosing positions or answers."""
    state = state_of(ctx)
    with state.using(model) as entry:
        m = entry.model
        ids = m.to_tokens(text, truncate=False)[0].tolist() if text else []
        str_tokens = m.to_str_tokens(text) if text else []
        checks = []
        for answer in answers:
            answer_ids = tok.encode(m.tokenizer, answer)
            checks.append(AnswerCheck(text=answer, single_token=len(answer_ids) == 1, ids=answer_ids,
                                      pieces=[m.tokenizer.decode([i]) for i in answer_ids]))
    window = token_window(str_tokens, detail)
    multi = [c.text for c in checks if not c.single_token]
    note = f"; {len(multi)} answer(s) are not single tokens: {multi}" if multi else (
        "; every answer is a single token" if checks else "")
    return Tokenization(model=entry.handle, tokens=window, ids=ids[window.start:], answers=checks,
                        interpretation=f"{len(ids)} tokens{note}")


class Released(Part):
    released: str
    caches_dropped: int
    loaded: list[LoadedEntry]
    caches: list[str]
    interpretation: str


def release(
    ctx: Context,
    handle: Annotated[str, Field(min_length=1, max_length=1000, description="a model or cache handle")],
) -> Released:
    """Free memory: unload a model (with its caches) or drop a cache."""
    state = state_of(ctx)
    if handle in state.models:
        dropped = state.release_model(handle)
        what = f"unloaded model {handle!r} and {dropped} cache(s)"
    elif handle in state.caches:
        state.release_cache(handle)
        dropped, what = 1, f"dropped cache {handle!r}"
    else:
        raise ToolError(f"no model or cache {handle!r}; models loaded: {list(state.models) or 'none'}, "
                        f"caches: {list(state.caches) or 'none'}")
    return Released(released=handle, caches_dropped=dropped, loaded=_loaded(state), caches=list(state.caches),
                    interpretation=what)


TOOLS = [(list_models, READ_ONLY), (load_model, LOADING), (model_info, READ_ONLY), (tokenize, READ_ONLY),
         (release, RELEASING)]
