"""The graph's hooks on a model: read each sender's output and edit each receiver's input in one forward.

A sender's output is what it adds to the residual stream, so that the outputs of all senders before a
receiver sum to its input up to terms that do not depend on the prompt (the attention bias b_O):
- input: `blocks.0.hook_resid_pre` (token and position embeddings);
- head h of layer l: `blocks.l.attn.hook_result[..., h, :]`;
- MLP l: `blocks.l.hook_mlp_out` (after any post-norm).
Under post-norms (Gemma 2/3, OLMo-2) a layer's attention output is norm(Σ_h result_h + b_O): the heads
do not add to the residual stream one by one. There a head's output is its term before the norm,
result_h + b_O / H (`post_norm_terms`), and the norm is applied where the model applies it, on the
receiver's side: a receiver reading some of the layer's heads from this run and the rest from another
run reads norm(Σ_h chosen term_h) (lens.circuits.patched). `shares` splits a run's normed attention
output into per-head terms that sum to it exactly (each term_h / this run's scale), for methods that
need additive per-head differences (EAP-IG).
Receivers' inputs are the per-head, pre-norm copies of the residual stream the on-request hooks
hand out (`hook_q_input` [batch, pos, n_heads, d_model], `hook_k_input` / `hook_v_input`
[batch, pos, n_kv_heads, d_model], `hook_mlp_in` [batch, pos, d_model]) and, for the logits, the last
block's `hook_resid_post`; editing one copy changes what that receiver reads and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from lens.circuits.graph import Graph, ReceiverKind

# on_sender(first sender index, outputs [batch, pos, n, d_model]) is called as each sender group is computed.
OnSender = Callable[[int, torch.Tensor], None]
# on_receiver(layer, kind, receivers, inputs [batch, pos, n, d_model]) → edited inputs (or None: unchanged).
OnReceiver = Callable[[int, ReceiverKind, range, torch.Tensor], "torch.Tensor | None"]

Component = Literal["attn", "mlp"]  # what a forward may skip (lens.hooks.given_outputs)
RECEIVER_HOOKS = {"q": "hook_q_input", "k": "hook_k_input", "v": "hook_v_input", "mlp": "hook_mlp_in"}


def component(kind: ReceiverKind) -> Component | None:
    """The component a receiver feeds: a query, key or value input its layer's attention, an MLP input its MLP."""
    return "attn" if kind in ("q", "k", "v") else "mlp" if kind == "mlp" else None


def head_outputs(model, layer: int, result: torch.Tensor) -> torch.Tensor:
    """Each head's output: result [batch, pos, n_heads, d_model] as it is, or under post-norms its term
    before the layer's post-norm, result_h + b_O / n_heads (they sum to the norm's input)."""
    cfg = model.cfg
    if not cfg.post_norms:
        return result
    return result + model.weights.b_O[model.blocks[layer].slot].to(result.dtype) / cfg.n_heads


def _norm_parts(model, layer: int, x: torch.Tensor):
    """(the norm, x in a wide dtype centred for LayerNorm, its scale [..., 1], weight [d_model]) of the
    layer's attention post-norm."""
    block = model.blocks[layer]
    norm, w = block.ln1_post, model.weights
    wide = torch.promote_types(x.dtype, torch.float32)
    x = x.to(wide)
    if norm.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    return norm, x, scale, w.ln1_post_w[block.slot].to(wide) + norm.offset


def post_norm(model, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The layer's attention post-norm applied to x [..., d_model] (the sum of its heads' terms)."""
    norm, centred, scale, weight = _norm_parts(model, layer, x)
    out = centred / scale * weight
    if norm.kind == "layernorm":
        out = out + model.weights.ln1_post_b[model.blocks[layer].slot].to(out.dtype)
    return out.to(x.dtype)


def post_norm_jvp(model, layer: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The post-norm's derivative at x [..., d_model] along v [..., n, d_model] (x broadcast over n):
    how norm(x + ε v) moves per unit ε."""
    norm, centred, scale, weight = _norm_parts(model, layer, x)
    v = v.to(centred.dtype)
    if norm.kind == "layernorm":
        v = v - v.mean(-1, keepdim=True)
    centred, scale = centred[..., None, :], scale[..., None, :]
    along = (centred * v).mean(-1, keepdim=True)
    return ((v - centred * along / scale.pow(2)) / scale * weight).to(x.dtype)


def shares(model, layer: int, terms: torch.Tensor) -> torch.Tensor:
    """Post-norms: the heads' terms [..., n_heads, d_model] of one run as shares of its normed attention
    output, term_h / scale (LayerNorm: centred, plus bias / n_heads), which sum to it exactly."""
    norm, centred, scale, weight = _norm_parts(model, layer, terms.sum(-2))
    x = terms.to(centred.dtype)
    if norm.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    out = x / scale[..., None, :] * weight
    if norm.kind == "layernorm":
        out = out + model.weights.ln1_post_b[model.blocks[layer].slot].to(out.dtype) / model.cfg.n_heads
    return out.to(terms.dtype)


def graph_hooks(model, graph: Graph, on_sender: OnSender | None = None, on_receiver: OnReceiver | None = None,
                edited: Callable[[int, ReceiverKind], bool] | None = None,
                skipped: frozenset[tuple[int, Component]] = frozenset()) -> list[tuple[str, Callable]]:
    """fwd_hooks for `model.hooks(...)` that report sender outputs and let receivers' inputs be edited;
    `edited(layer, kind)`: whether that receiver group may be edited (default all). A group left out is
    not hooked, so its layer computes queries, keys, values or the MLP input the fast way, from one shared
    residual stream instead of a copy per head. `skipped`: components (layer, "attn" | "mlp") the forward
    does not run (lens.hooks.given_outputs): neither their senders nor their receivers are hooked."""
    hooks = []
    if on_sender is not None:
        def read_input(x, point):
            on_sender(0, x[:, :, None])
        hooks.append(("blocks.0.hook_resid_pre", read_input))
        for layer in range(graph.n_layers):
            def read_heads(x, point, layer=layer):
                on_sender(graph.head(layer, 0), head_outputs(model, layer, x))

            def read_mlp(x, point, layer=layer):
                on_sender(graph.mlp(layer), x[:, :, None])
            if (layer, "attn") not in skipped:
                hooks.append((f"blocks.{layer}.attn.hook_result", read_heads))
            if (layer, "mlp") not in skipped:
                hooks.append((f"blocks.{layer}.hook_mlp_out", read_mlp))
    if on_receiver is not None:
        for layer, kind, receivers in graph.groups():
            if (edited is not None and not edited(layer, kind)) or (layer, component(kind)) in skipped:
                continue

            def edit(x, point, layer=layer, kind=kind, receivers=receivers):
                per_head = x.dim() == 4
                out = on_receiver(layer, kind, receivers, x if per_head else x[:, :, None])
                return None if out is None else out if per_head else out[:, :, 0]
            name = (f"blocks.{graph.n_layers - 1}.hook_resid_post" if kind == "logits"
                    else f"blocks.{layer}.{RECEIVER_HOOKS[kind]}")
            hooks.append((name, edit))
    return hooks


def final_resid_hook(graph: Graph, keep: dict) -> tuple[str, Callable]:
    """A hook that keeps the residual stream the logits read (after any edit of the logits receiver)."""
    def read(x, point):
        keep["resid"] = x
    return f"blocks.{graph.n_layers - 1}.hook_resid_post", read


def place_rows(logits: torch.Tensor, rows: tuple[int, int, int]) -> torch.Tensor:
    """logits [copies, batch, k, d_vocab] of rows start..stop of a set of n_rows, placed among zeros for the
    other rows: a per-row metric of the whole set (each row its own answer and position) reads them in place."""
    start, stop, n_rows = rows
    if logits.shape[1] == n_rows:
        return logits
    placed = logits.new_zeros(logits.shape[0], n_rows, *logits.shape[2:])
    placed[:, start:stop] = logits
    return placed


def sender_outputs(model, graph: Graph, tokens: torch.Tensor, mask: torch.Tensor | None, metric=None,
                   rows: tuple[int, int, int] | None = None, kv=None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Every sender's output on one input: [n_senders, batch, pos, d_model]; with a metric, also its value
    per prompt on this input ([batch] float64), from the same forward. rows (start, stop, n_rows): the
    input is those rows of a set the metric was made for (default: the whole set). kv: a KVCache the input
    continues (empty, it is filled with the run's keys and values; holding a prefix, `tokens` are the
    positions after it, and the metric reads positions of the whole sequence)."""
    from lens.circuits.patched import row_metric
    from lens.guard import require
    batch, n_pos = tokens.shape
    require(graph.n_senders * batch * n_pos * model.cfg.d_model * model.dtype.itemsize,
            "every sender's output (circuit discovery)", "use fewer or shorter prompts")
    out = torch.empty(graph.n_senders, batch, n_pos, model.cfg.d_model, dtype=model.dtype, device=model.device)

    def keep(first, x):
        out[first: first + x.shape[2]] = x.permute(2, 0, 1, 3)
    kept = {}
    hooks = graph_hooks(model, graph, on_sender=keep) + [final_resid_hook(graph, kept)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens, attention_mask=mask, return_type=None, past_kv_cache=kv)
        if metric is None:
            return out
        past = 0 if kv is None else kv.length - n_pos  # the forward has extended the cache by n_pos
        positions, per_row = row_metric(metric, past + n_pos)
        resid = kept["resid"] if positions is None else kept["resid"][:, [p - past for p in positions]]
        start, stop, n_rows = rows or (0, batch, batch)
        values = per_row(place_rows(model.final_logits(resid)[None], (start, stop, n_rows)))[0, start:stop]
        return out, values.double().cpu()


def as_shares(model, graph: Graph, outputs: torch.Tensor) -> torch.Tensor:
    """Sender outputs [n_senders, batch, pos, d_model] of one run with, under post-norms, each layer's head
    terms replaced in place by their shares of the normed attention output (`shares`)."""
    if model.cfg.post_norms:
        for layer in range(graph.n_layers):
            heads = slice(graph.head(layer, 0), graph.head(layer, 0) + graph.n_heads)
            with torch.no_grad():
                outputs[heads] = shares(model, layer, outputs[heads].permute(1, 2, 0, 3)).permute(2, 0, 1, 3)
    return outputs


def head_input_grads(model, layer: int, kind: str, resid: torch.Tensor, projected: torch.Tensor,
                     grad: torch.Tensor) -> torch.Tensor:
    """What a per-head copy of the layer's attention input would receive as gradient, from the gradient at the
    heads' query, key or value projections (kind "q", "k" or "v") alone, summed over copies of the batch:
    Σ_c J_ln1(resid_c)^T (W_h grad_c,h).
    resid [copies, batch, pos, d_model]: the residual stream the layer's attention pre-norm read;
    projected, grad [copies, batch, pos, n, d_head]: the projection (attn.hook_q / hook_k / hook_v: n heads,
    n_kv_heads for k and v) and the gradient there (so it includes any q/k norm and rotary after it)
    → [n, batch, pos, d_model]. With y = ln1(x) = P x / s · w + b (P centres for LayerNorm, s = rms(P x)):
    J^T v = P (w v) / s - P x ((P x) · (w v)) / (d s³), so with W' = P diag(w) W the sum over copies is
    W'_h Σ_c grad_c,h / s_c - Σ_c P x_c k_c,h, k_c,h = ((P x_c) W'_h / s_c) · grad_c,h / (d s_c²), where
    (P x_c) W'_h / s_c is the projection less its biases (b_h, and b W_h for LayerNorm)."""
    block, attn = model.blocks[layer], model.blocks[layer].attn
    wide = torch.promote_types(grad.dtype, torch.float32)
    kv = "" if kind == "q" else "_"
    W, bias = attn.W(f"{kv}W_{kind.upper()}").to(wide), attn.W(f"{kv}b_{kind.upper()}").to(wide)
    grad = grad.to(wide)
    if not hasattr(block, "ln1"):  # no pre-norm (OLMo-2): the projections read the residual as it is
        return torch.einsum("bphe,hde->hbpd", grad.sum(0), W).to(resid.dtype)
    norm, w = block.ln1, model.weights.ln1_w[block.slot].to(wide)
    x = resid.to(wide)
    if norm.kind == "layernorm":  # F.layer_norm applies the stored weight, with no offset
        x = x - x.mean(-1, keepdim=True)
        bias = bias + torch.einsum("d,hde->he", model.weights.ln1_b[block.slot].to(wide), W)
    elif norm.offset:
        w = w + norm.offset
    scale = (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()  # [copies, batch, pos, 1]
    W = W * w[:, None]
    if norm.kind == "layernorm":
        W = W - W.mean(1, keepdim=True)
    through = torch.einsum("bphe,hde->hbpd", (grad / scale[..., None]).sum(0), W)
    along = ((projected.to(wide) - bias) * grad).sum(-1) / (x.shape[-1] * scale.pow(2))  # [copies, batch, pos, n]
    return (through - torch.einsum("cbpd,cbph->hbpd", x, along)).to(resid.dtype)
