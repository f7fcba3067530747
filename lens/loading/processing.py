"""Weight processing with TransformerLens semantics: rewrites that leave the model's outputs unchanged
but make its weights easier to read.

- fold_ln: fold each norm's weight (and LayerNorm's bias) into the matrices that read its output
  (ln1 → W_Q/W_K/W_V, ln2 → W_in/W_gate, ln_final → W_U), leaving weight-less norms; for LayerNorm
  also centre those matrices over d_model, since a centred input cannot see their mean.
- center_writing_weights: remove the mean over d_model from everything that writes to the residual
  (W_E, W_pos, W_O, b_O, W_out, b_out). Exact only when every reader of the residual is a LayerNorm.
- center_unembed: remove the mean over the vocabulary from W_U and b_U (softmax is shift-invariant).
- fold_value_biases: move b_V into b_O (attention rows sum to 1, so a value bias always adds b_V W_O).
- refactor_factored_attn_matrices: refactor each head's W_Q W_K^T (biases as an extra input coordinate) into
  two factors of equal singular values, and W_V W_O into U S and an orthonormal W_O (b_V folded into b_O)
  (Elhage et al. 2021); needs learned positions and one key/value head per query head.

A flag that would not be exact for an architecture is skipped, and the reason recorded: each call
returns what it did, which the loader puts in model.load_info["processing"] and the summary.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


def process_weights(model, fold_ln: bool = False, center_writing_weights: bool = False,
                    center_unembed: bool = False, fold_value_biases: bool = False,
                    refactor_factored_attn_matrices: bool = False) -> list[str]:
    """Apply the flags in TransformerLens's order; returns one line per flag asked for."""
    if model.weights.parts and (fold_ln or center_writing_weights or center_unembed or fold_value_biases
                                or refactor_factored_attn_matrices):
        raise ValueError("weight processing rewrites the stacked weights, which a dispatched model no longer has: "
                         "process before dispatch() (from_pretrained's flags do)")
    done = []
    with torch.no_grad():
        if fold_ln:
            done.append(_fold_ln(model))
        if center_writing_weights:
            done.append(_center_writing_weights(model))
        if center_unembed:
            done.append(_center_unembed(model))
        if fold_value_biases:
            done.append(_fold_value_biases(model))
        if refactor_factored_attn_matrices:
            done.append(_refactor_factored_attn_matrices(model))
    return done


def _norm_scale(model, name: str) -> torch.Tensor:
    """The effective multiplier of a norm (w, or 1 + w for Gemma), in fp32."""
    return getattr(model.weights, name).float() + model.cfg.norm_weight_offset


def _set_identity(model, name: str) -> None:
    """Make a norm weight-less: stored weight = 1 - offset, so that offset + w = 1."""
    getattr(model.weights, name).fill_(1.0 - model.cfg.norm_weight_offset)


def _fold_into(w: torch.Tensor, b: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor | None,
               center: bool) -> None:
    """W [n_layers, (n_experts,) d_model, out] reads norm(x) = n(x) * scale + shift, with scale and
    shift [n_layers, d_model] (or [d_model]): fold them into W and b."""
    experts = (1,) * (w.dim() - scale.dim() - 1)  # broadcast over an expert axis
    if shift is not None:
        b += (shift.view(*shift.shape[:-1], *experts, 1, -1) @ w.float()).squeeze(-2).to(b.dtype)
    w.copy_((w.float() * scale.view(*scale.shape[:-1], *experts, -1, 1)).to(w.dtype))
    if center:
        w -= w.mean(-2, keepdim=True)


def _fold_ln(model) -> str:
    cfg, w = model.cfg, model.weights
    layer_norm = cfg.norm == "layernorm"
    if layer_norm and cfg.gated_mlp:  # no family has this; W_gate has no bias to take the LayerNorm shift
        raise NotImplementedError("fold_ln of a LayerNorm into a gated MLP is not supported")
    mlp = ("in", "gate") if cfg.gated_mlp else ("in",)
    mlp = mlp + ("router",) if cfg.n_experts else mlp
    groups = [("ln1", ("Q", "K", "V") + mlp)] if cfg.shared_norm else [("ln1", ("Q", "K", "V")), ("ln2", mlp)]
    groups = groups if cfg.pre_norms else []
    for norm, readers in groups:
        scale = _norm_scale(model, f"{norm}_w")  # [n_layers, d_model]
        shift = getattr(w, f"{norm}_b").float() if layer_norm else None
        for reader in readers:
            _fold_into(getattr(w, f"W_{reader}"), getattr(w, f"b_{reader}", None), scale, shift, center=layer_norm)
        _set_identity(model, f"{norm}_w")
        if layer_norm:
            getattr(w, f"{norm}_b").zero_()
    _untie(model)
    scale = _norm_scale(model, "ln_final_w")
    shift = w.ln_final_b.float() if layer_norm else None
    _fold_into(w.W_U, w.b_U, scale, shift, center=layer_norm)
    _set_identity(model, "ln_final_w")
    if layer_norm:
        w.ln_final_b.zero_()
    extra = " (post-norms and qk-norms keep their weights: nothing linear follows them)" \
        if cfg.post_norms or cfg.qk_norm else ""
    return f"fold_ln: {', '.join([n for n, _ in groups] + ['ln_final'])} weights{' and biases' if layer_norm else ''} folded{extra}"


def _center_writing_weights(model) -> str:
    cfg, w = model.cfg, model.weights
    if cfg.norm != "layernorm":
        return "center_writing_weights: skipped (RMSNorm does not centre its input, so it would change outputs)"
    if cfg.post_norms:
        return "center_writing_weights: skipped (post-norms read the block outputs uncentred)"
    _untie(model)  # W_U reads the residual; centring a tied W_E must leave it alone
    writers = ["W_E", "W_O", "b_O", "W_out", "b_out"] + (["W_pos"] if cfg.positions == "learned" else [])
    for name in writers:
        param = getattr(w, name)
        param -= param.mean(-1, keepdim=True)
    return "center_writing_weights: W_E, W_pos, W_O, b_O, W_out, b_out centred over d_model"


def _center_unembed(model) -> str:
    if model.cfg.final_logit_softcap is not None:
        return "center_unembed: skipped (a logit soft-cap is not shift-invariant)"
    _untie(model)
    w = model.weights
    w.W_U -= w.W_U.mean(-1, keepdim=True)
    w.b_U -= w.b_U.mean()
    return "center_unembed: W_U and b_U centred over the vocabulary"


def _fold_value_biases(model) -> str:
    w = model.weights
    b_V = w.head_view("b_V")  # [n_layers, n_heads, d_head], kv heads repeated per group
    w.b_O += torch.einsum("lhe,lhed->ld", b_V, w.head_view("W_O"))
    w.b_V.zero_()
    return "fold_value_biases: b_V folded into b_O"


def _refactor_factored_attn_matrices(model) -> str:
    from lens.factored import FactoredMatrix
    cfg, w = model.cfg, model.weights
    if cfg.positions == "rotary":
        raise ValueError("refactor_factored_attn_matrices needs learned positions: with rotary the QK circuit "
                         "depends on the query and key positions")
    if cfg.n_kv_heads != cfg.n_heads:
        raise ValueError("refactor_factored_attn_matrices needs one key/value head per query head (no GQA)")
    W_Q, b_Q, W_K, b_K = (w.head_view(name) for name in ("W_Q", "b_Q", "_W_K", "_b_K"))  # views
    q_eff = torch.cat([W_Q, b_Q[:, :, None]], dim=2)  # [n_layers, n_heads, d_model + 1, d_head]: x · 1
    k_eff = torch.cat([W_K, b_K[:, :, None]], dim=2)
    even = FactoredMatrix(q_eff, k_eff.mT).make_even()
    k_even = even.B.mT
    W_Q.copy_(even.A[:, :, :-1])
    b_Q.copy_(even.A[:, :, -1])
    W_K.copy_(k_even[:, :, :-1])
    b_K.copy_(k_even[:, :, -1])
    W_V, W_O = w.head_view("_W_V"), w.head_view("W_O")
    w.b_O += torch.einsum("lhe,lhed->ld", w.head_view("_b_V"), W_O)
    w.b_V.zero_()
    U, S, V = FactoredMatrix(W_V, W_O).svd()
    W_V.copy_(U * S[..., None, :])
    W_O.copy_(V.mT)
    return "refactor_factored_attn_matrices: W_Q/W_K made even, W_V = U S and W_O orthonormal per head"


def _untie(model) -> None:
    """Give W_U its own storage before it is rewritten, so W_E is left as it is."""
    if not model.cfg.tied_embeddings:
        return
    w = model.weights
    cfg = dataclasses.replace(model.cfg, tied_embeddings=False)
    w.register_parameter("W_U", nn.Parameter(w.W_E.detach().T.clone()))
    for module in model.modules():  # the model, its weights and components share one config
        if getattr(module, "cfg", None) is not None:
            module.cfg = cfg
    model._sync_cfg_device()
