"""Edge scores: how much the metric moves when one edge reads its sender from the corrupted run.

score(s → r) estimates m(clean with edge s → r corrupted) - m(clean), the metric being the mean over
the prompts; important edges have large |score|. Three methods:
- "eap" (Syed et al. 2023): (corrupted_s - clean_s) · ∂m/∂input_r on the clean run: one corrupted
  forward, one clean forward and one backward for every edge at once (under post-norms a head's
  difference is taken through its layer's norm, J_norm · (corrupted_h - clean_h), so the score is the
  derivative of the exact edge-patched metric, lens.circuits.patched);
- "eap-ig" (Hanna et al. 2024): the same with ∂m/∂input_r averaged over `steps` inputs interpolated
  between the corrupted and the clean embeddings (midpoints α = (k + ½) / steps), batched (under
  post-norms a head's difference is that of its share of the normed output, forward.shares);
- "exact": edge patching, one patched copy of the set per edge (the ground truth; small graphs only).
A node's score is the sum of its outgoing edges' scores (for EAP, the attribution-patching estimate of
corrupting its whole output); the logits' score is the sum of their incoming edges'.

Memory: EAP keeps every sender's output on a chunk of prompts, [n_senders, prompts, pos, d_model] per
buffer: the corrupted run's, turned into the differences in place (EAP-IG holds the clean run's too while
it takes them). A query, key or value input's gradient comes from the gradient at its head's projection
(forward.head_input_grads), so no per-head copy of the residual stream is made. Prompts are chunked so
that the buffers and the gradient pass fit the budget (the caller's guard, lens.guard), and the largest
chunk's bytes are reserved through the guard before anything is allocated: a request that cannot fit
even one prompt at a time is refused before any forward, with the figure and what to shrink.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch

from lens.circuits.forward import (
    as_shares,
    final_resid_hook,
    graph_hooks,
    head_input_grads,
    place_rows,
    post_norm_jvp,
    sender_outputs,
)
from lens.circuits.graph import Graph
from lens.circuits.patched import run_circuits
from lens.circuits.prompts import Pair
from lens.guard import limit, mib, require
from lens.memory import forward_bytes
from lens.model.kv_cache import KVCache
from lens.patching.engine import DEFAULT_MEMORY_BUDGET, _bytes_per_copy, _kv_prefix
from lens.patching.metrics import metric_name

Method = Literal["eap", "eap-ig", "exact"]
METHODS: tuple[Method, ...] = ("eap", "eap-ig", "exact")
MAX_EXACT_EDGES = 5000
BUFFERS = {"eap": 1, "eap-ig": 2}  # sender-output buffers a method keeps per chunk of prompts, at most
# Receivers' gradients gathered before they meet the sender differences in one matmul: with a few receivers
# at a time the product only streams the differences through memory; with ~64 it is bound by arithmetic.
GRADIENT_WINDOW = 64


@dataclass
class EdgeScores:
    graph: Graph
    scores: torch.Tensor  # [n_senders, n_receivers] float64, 0 where there is no edge
    method: str
    metric: str
    n_prompts: int
    clean_value: float  # the mean metric on the clean prompts
    corrupted_value: float  # ... and on the corrupted ones
    extra: dict = field(default_factory=dict)
    clean_rows: torch.Tensor | None = None  # the metric per prompt on the clean prompts [n_prompts] float64
    source: tuple = field(default=(), repr=False, compare=False)  # (pair, metric) the scores were made on

    def clean_rows_for(self, pair: Pair, metric) -> torch.Tensor | None:
        """The clean prompts' metric per prompt when these scores were made on this pair with this metric
        (the same metric object), else None."""
        if not self.source or self.clean_rows is None or self.source[1] is not metric:
            return None
        return self.clean_rows if self.source[0].same(pair) else None

    def node_scores(self) -> dict[str, float]:
        """Node name → the sum of its outgoing edges' scores (the logits: of their incoming edges')."""
        out = self.scores.sum(1)
        values = {name: float(out[i]) for i, name in enumerate(self.graph.sender_names)}
        values["logits"] = float(self.scores[:, self.graph.logits].sum())
        return values

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        """The n edges of largest |score|: (name, score)."""
        flat = self.scores.abs().flatten()
        index = flat.topk(min(n, self.graph.n_edges)).indices
        R = self.graph.n_receivers
        return [(self.graph.edge_name(int(i) // R, int(i) % R), float(self.scores.flatten()[i])) for i in index]


def _pass_bytes(model, graph: Graph, rows: int, n_pos: int, copies: int, kept: int = 0) -> int:
    """A gradient pass over `rows` prompts × `copies` of n_pos positions after `kept` cached ones: the
    activations kept for the backward (lens's own estimate, or the guard's estimate of the forward, with the
    cache of the kept positions, where that is larger), the copies of the MLP inputs and of the final residual
    the receivers read, the queries, keys and values kept for their gradients, and per prompt the receivers'
    gradients summed over copies (one layer's at a time, and a window waiting for the matmul)."""
    cfg, size = model.cfg, model.dtype.itemsize
    residual = n_pos * cfg.d_model * size
    per_copy = 4 * _bytes_per_copy(model, 1, n_pos, n_pos, n_pos) + 2 * (cfg.n_layers + 1) * residual
    per_copy += cfg.n_layers * (graph.n_heads + 2 * graph.n_kv_heads) * cfg.d_head * n_pos * size
    with torch.enable_grad():  # the guard counts every layer's activations as kept under autograd
        checked = sum(forward_bytes(model, copies * rows, n_pos, kept + n_pos, False, kept + n_pos if kept else 0).values())
    return max(copies * rows * per_copy, checked) + rows * (3 * graph.per_layer + GRADIENT_WINDOW) * residual


def _buffer_bytes(model, graph: Graph, rows: int, n_pos: int, method: Method) -> int:
    """The sender outputs EAP keeps, each [n_senders, rows, pos, d_model]: the corrupted run's and the
    differences (EAP-IG: the clean run's too)."""
    return BUFFERS[method] * graph.n_senders * rows * n_pos * model.cfg.d_model * model.dtype.itemsize


def _rows_per_forward(model, graph: Graph, n_pos: int, method: Method, steps: int, memory_budget: int | None,
                      kept: int = 0) -> int:
    """Prompts per gradient pass, so that the pass and the sender buffers fit the budget (at least 1)."""
    budget = limit(DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)
    copies = 1 if method == "eap" else steps
    per_row = _pass_bytes(model, graph, 1, n_pos, copies, kept) + _buffer_bytes(model, graph, 1, n_pos, method)
    return max(1, budget // per_row)


def _reserve(model, graph: Graph, rows: int, n_pos: int, method: Method, steps: int, kept: int = 0) -> None:
    """Ask the caller's guard for the largest chunk's sender buffers and gradient pass before anything is
    allocated, so a request that cannot fit is refused before any forward runs."""
    buffers = _buffer_bytes(model, graph, rows, n_pos, method)
    copies = 1 if method == "eap" else steps
    require(buffers + _pass_bytes(model, graph, rows, n_pos, copies, kept),
            f"{method.upper()}'s sender differences ({mib(buffers)}: {BUFFERS[method]} x {graph.n_senders} senders x "
            f"{rows} prompts x {n_pos} positions x {model.cfg.d_model}) with its gradient pass",
            "use shorter prompts or a smaller model" + (", or method='eap' (one copy per prompt instead of steps, "
                                                        "one buffer instead of two)" if method == "eap-ig" else ""))


@contextmanager
def _inputs_only(model):
    """Gradients to the inputs only: the weights stop requiring gradients for the pass (restored after), so
    autograd keeps no matmul input for a weight's gradient, about a quarter of the activations it keeps."""
    weights = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in weights:
            p.requires_grad_(False)
        yield
    finally:
        for p in weights:
            p.requires_grad_(True)


def _grad_pass(model, graph: Graph, tokens, mask, per_row, positions, delta, scores, weight: float,
               rows: tuple[int, int, int], interpolate: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
               reference: torch.Tensor | None = None, kv: KVCache | None = None) -> torch.Tensor:
    """One forward + backward of `tokens` adding delta_s · ∂(weight · Σ rows metric)/∂input_r into scores, and
    the metric per row of that forward ([copies, batch] float64).
    rows (start, stop, n_rows): which rows of the whole set `tokens` are; a per-row metric of the set (each
    row its own answer and position) reads them in their places among the set's rows.
    delta [n_senders, batch, pos, d_model] is given (eap-ig) or, with `reference`, filled from this run (eap;
    delta may be `reference` itself: each sender's slot is read, then overwritten by its difference).
    interpolate (start, end, alphas [copies]): the input replaced by start + α (end - start), copy-major.
    kv: the keys and values of positions before `tokens`, for every copy (see _prefix).
    Cells of senders at or after a receiver get values too (the matmul covers a window of receivers); the
    caller masks them with graph.valid."""
    batch, n_pos = delta.shape[1], delta.shape[2]
    copies = 1 if interpolate is None else len(interpolate[2])

    head_layer = {graph.head(layer, 0): layer for layer in range(graph.n_layers)} if model.cfg.post_norms else {}

    def on_sender(first, x):
        n = x.shape[2]
        change = reference[first: first + n] - x.detach().permute(2, 0, 1, 3)  # [n, batch, pos, d_model]
        if first in head_layer:  # post-norms: the change of the layer's normed output, to first order
            total = x.detach().sum(2)  # [batch, pos, d_model] the norm's input on this run
            change = post_norm_jvp(model, head_layer[first], total, change.permute(1, 2, 0, 3)).permute(2, 0, 1, 3)
        delta[first: first + n] = change

    window = {"grads": [], "receivers": [], "prefix": 0}  # receivers' gradients waiting for the matmul

    def flush():
        if window["grads"]:
            prefix, receivers = window["prefix"], torch.cat(window["receivers"])
            scores[:prefix, receivers] += (delta[:prefix].flatten(1) @ torch.cat(window["grads"]).T).double()
            window.update(grads=[], receivers=[], prefix=0)

    def accumulate(prefix, rows, grad):  # grad [R_g, batch * pos * d_model], summed over copies
        window["grads"].append(grad)
        window["receivers"].append(torch.arange(rows.start, rows.stop))
        window["prefix"] = max(window["prefix"], prefix)
        if sum(len(r) for r in window["receivers"]) >= GRADIENT_WINDOW:
            flush()

    def on_receiver(layer, kind, rows, x):  # the MLP input and the logits: x [copies * batch, pos, 1, d_model]
        y = x.clone()
        prefix = graph.senders_before(layer, kind)
        y.register_hook(lambda grad: accumulate(prefix, rows, grad.view(copies, -1).sum(0)[None]))
        return y

    resid_pre = {}  # layer → the residual stream its attention pre-norm reads [copies * batch, pos, d_model]

    def on_projection(layer, kind, x, point):
        """A query, key or value projection [copies * batch, pos, n, d_head]: its receivers' input gradients
        come from the gradient here, through the weights and the pre-norm (forward.head_input_grads), so the
        layer projects one shared residual stream instead of a copy per head."""
        rows, prefix = graph.receivers(layer, kind), graph.senders_before(layer, kind)
        # detached: the hook holds no reference to x's graph (x → its hook → x would be a cycle, freed late)
        resid, projected = resid_pre[layer].detach(), x.detach()

        def on_grad(grad):
            grads = head_input_grads(model, layer, kind, resid.view(copies, batch, n_pos, -1),
                                     projected.view(copies, batch, *projected.shape[1:]),
                                     grad.view(copies, batch, *grad.shape[1:]))
            accumulate(prefix, rows, grads.flatten(1))
        x.register_hook(on_grad)

    def leaf(x, point):
        if interpolate is None:
            keep["leaf"] = x.detach().requires_grad_(True)
        else:
            start, end, alphas = interpolate
            alphas = alphas.to(x.dtype).view(-1, 1, 1, 1)
            mixed = start[None] + alphas * (end - start)[None]  # [copies, batch, pos, d_model]
            keep["leaf"] = mixed.flatten(0, 1).requires_grad_(True)
        return keep["leaf"]

    keep = {}
    hooks = [("blocks.0.hook_resid_pre", leaf)]
    hooks += graph_hooks(model, graph, on_sender if reference is not None else None, on_receiver,
                         edited=lambda layer, kind: kind in ("mlp", "logits"))
    for layer in range(graph.n_layers):
        hooks.append((f"blocks.{layer}.hook_resid_pre", lambda x, point, layer=layer: resid_pre.update({layer: x})))
        hooks += [(f"blocks.{layer}.attn.hook_{kind}", partial(on_projection, layer, kind)) for kind in "qkv"]
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", lambda x, point: keep.update(resid=x)))
    start, stop, n_rows = rows
    copied = tokens.repeat(copies, 1)
    copied_mask = None if mask is None else mask.repeat(copies, 1)
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks), _inputs_only(model):
        model(copied, attention_mask=copied_mask, return_type=None, past_kv_cache=kv)
        resid = keep["resid"] if positions is None else keep["resid"][:, positions]
        logits = model.final_logits(resid).view(copies, batch, -1, model.cfg.d_vocab)
        # the metric's gradient first, on the set's rows placed apart from the model's graph, so the backward
        # through the model starts from this chunk's rows only
        placed = place_rows(logits.detach(), rows).requires_grad_(True)
        values = per_row(placed)[:, start:stop]
        (grad,) = torch.autograd.grad(values.sum() * weight, [placed])
        torch.autograd.grad(logits, [keep["leaf"]], grad[:, start:stop])  # the receivers' hooks accumulate scores
    flush()
    return values.detach().double().cpu()


def _prefix(model, part: Pair, kept: int) -> Callable[[int], KVCache | None]:
    """copies → a KV cache holding the keys and values of the first `kept` positions, where the part's clean
    and corrupted prompts are the same tokens, for that many copies of its rows (None when kept is 0). Every
    sender's difference is 0 there, so no edge's score has a term at those positions: the methods' runs
    start after them, attending to these keys and values (exact, as the interpolated inputs of EAP-IG are
    the same there too)."""
    if not kept:
        return lambda copies: None
    base = KVCache(model.cfg, len(part), part.clean.shape[1], model.dtype, model.device)
    with torch.no_grad():
        model(part.clean[:, :kept], attention_mask=None if part.mask is None else part.mask[:, :kept],
              return_type=None, past_kv_cache=base)
    return lambda copies: _kv_prefix(model, base, len(part), 0, kept, copies, part.mask)


def _both_runs(model, graph: Graph, part: Pair, positions, per_row, rows: tuple[int, int, int],
               kv: KVCache | None = None):
    """EAP-IG's sender differences from one forward of the corrupted and the clean prompts together:
    (corrupted - clean outputs [n_senders, batch, pos, d_model] (a view of both runs' buffer; under post-norms
    of their shares, forward.shares), (the corrupted and the clean embeddings [batch, pos, d_model]),
    [2, batch] float64 the metric per row on the corrupted and on the clean prompts)."""
    batch, kept = len(part), {}
    mask = None if part.mask is None else part.mask.repeat(2, 1)
    with model.hooks(fwd_hooks=[final_resid_hook(graph, kept)]):
        outputs = sender_outputs(model, graph, torch.cat([part.corrupted, part.clean]), mask, kv=kv)
    with torch.no_grad():
        resid = kept["resid"] if positions is None else kept["resid"][:, positions]
        logits = model.final_logits(resid).view(2, batch, -1, model.cfg.d_vocab)
        values = per_row(place_rows(logits, rows))[:, rows[0]: rows[1]].double().cpu()
    as_shares(model, graph, outputs)
    corrupted, clean = outputs[:, :batch], outputs[:, batch:]
    ends = (corrupted[0].clone(), clean[0].clone())
    return corrupted.sub_(clean), ends, values


def edge_scores(model, pair: Pair, metric, method: Method = "eap", steps: int = 5,
                memory_budget: int | None = None) -> EdgeScores:
    """Scores of every edge of the model's graph for the metric over the pair's prompts (a Pair or a prompt set)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    if method == "eap" and getattr(metric, "flat_at_clean", False):
        raise ValueError(f"{metric_name(metric)} is 0 at its minimum, the clean run, so its gradient there is 0 and "
                         f"EAP (the gradient at the clean run) would score every edge 0: use method='eap-ig' (its "
                         f"gradients are taken between the corrupted and the clean run) or method='exact'")
    from lens.circuits.patched import row_metric
    pair = Pair.of(model, pair)
    graph = Graph.of(model)
    batch, n_pos = pair.clean.shape
    positions, per_row = row_metric(metric, n_pos)
    # positions before the first token where clean and corrupted prompts differ run once (_prefix), unless
    # the metric reads them
    kept = 0 if positions is None else min(pair.unchanged(), *positions)
    run_positions = None if positions is None else [p - kept for p in positions]
    if method != "exact":
        chunk = min(batch, _rows_per_forward(model, graph, n_pos - kept, method, steps, memory_budget, kept))
        _reserve(model, graph, chunk, n_pos - kept, method, steps, kept)
    if method == "exact":
        clean_rows, corrupted_rows = pair.row_values(model, metric)
        scores = exact_scores(model, graph, pair, metric, memory_budget)
    else:  # the metric on the clean and corrupted prompts comes from forwards the method runs anyway
        scores = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.float64)
        clean_rows, corrupted_rows = torch.empty(batch, dtype=torch.float64), torch.empty(batch, dtype=torch.float64)
        for start in range(0, batch, chunk):
            whole = pair.rows(slice(start, start + chunk))
            rows = (start, start + len(whole), batch)
            prefix = _prefix(model, whole, kept)
            part = whole.positions(kept)
            if method == "eap":  # the corrupted run's sender outputs, turned into the differences in place
                delta, corrupted_rows[start: rows[1]] = sender_outputs(model, graph, part.corrupted, part.mask,
                                                                       metric, rows, prefix(1))
                clean_rows[start: rows[1]] = _grad_pass(model, graph, part.clean, part.mask, per_row, run_positions,
                                                        delta, scores, 1.0 / batch, rows, reference=delta,
                                                        kv=prefix(1))[0]
            else:
                delta, ends, values = _both_runs(model, graph, part, run_positions, per_row, rows, prefix(2))
                corrupted_rows[start: rows[1]], clean_rows[start: rows[1]] = values
                alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
                _grad_pass(model, graph, part.clean, part.mask, per_row, run_positions, delta, scores,
                           1.0 / (batch * steps), rows, interpolate=(*ends, alphas), kv=prefix(steps))
        scores = scores * graph.valid
    return EdgeScores(graph, scores, method, metric_name(metric), batch, float(clean_rows.mean()),
                      float(corrupted_rows.mean()), {"steps": steps} if method == "eap-ig" else {}, clean_rows,
                      (pair, metric))


def exact_scores(model, graph: Graph, pair: Pair, metric, memory_budget: int | None = None) -> torch.Tensor:
    """m(clean with one edge corrupted) - m(clean) for every edge: [n_senders, n_receivers] float64."""
    edges = graph.valid.nonzero()
    if len(edges) > MAX_EXACT_EDGES:
        raise ValueError(f"exact edge patching runs one patched copy of the set per edge; this graph has "
                         f"{len(edges)} edges (limit {MAX_EXACT_EDGES}): use method='eap-ig' on this model")
    reference = sender_outputs(model, graph, pair.corrupted, pair.mask)
    clean = float(run_circuits(model, graph, pair.clean, pair.mask, reference,
                               torch.zeros(1, graph.n_senders, graph.n_receivers), metric).mean())
    scores = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.float64)
    for start in range(0, len(edges), 256):
        part = edges[start: start + 256]
        off = torch.zeros(len(part), graph.n_senders, graph.n_receivers)
        off[torch.arange(len(part)), part[:, 0], part[:, 1]] = 1
        values = run_circuits(model, graph, pair.clean, pair.mask, reference, off, metric, memory_budget)
        scores[part[:, 0], part[:, 1]] = values.mean(1) - clean
    return scores
