"""Edge-patched forwards: many circuits at once, each receiver reading some senders from this run and
the rest from a reference run (the corrupted prompts, or a mean).

A circuit is given as `off` weights [n_senders, n_receivers]: 0 = the edge is in the circuit (the
receiver reads the sender's output from this run), 1 = it is out (the receiver reads the reference
output instead), values between mix the two (used for directional derivatives). Receiver r then reads

    input_r = resid_r(this run) + Σ_s off[s, r] · (reference_s - this_s)

which is the clean run when nothing is off and the reference run when everything is (the outputs of
the senders before r sum to resid_r up to prompt-independent terms). The sum runs over the edges that
differ from the nearest of "all in" and "all out" only (a small circuit is "all out" plus its edges), as
one matmul of the kept differences per layer. A forward computes only what some circuit reads from this
run: an attention layer or MLP whose every outgoing edge is off in every circuit of the forward is not
run, its output given from the reference (lens.hooks.given_outputs; that is exact: each receiver would
read the reference's output for it anyway); and positions before the first token where this run and the
reference run differ (`prefix`) are run once, by the reference run. Copies of the batch, one per
circuit, share a forward when the budget allows and the components they compute overlap.

Under post-norms a layer's heads reach the residual stream through the layer's norm, so for the heads
of each earlier layer l the receiver reads, in place of their terms above,

    norm_l(Σ_h term_h(this) + off[h, r] · (term_h(reference) - term_h(this)))  -  attn_out_l(this)

(lens.circuits.forward: a head's output is its term before the norm): the norm of the mix of this
run's and the reference run's heads the receiver is given, as the model itself would compute it from
those heads. A receiver that reads all of a layer's heads from one run costs nothing extra; a layer
split between the runs costs one norm per receiver. So a node-list circuit equals patching every
out-of-circuit node's output with its reference value, on every family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lens.circuits.forward import component, final_resid_hook, graph_hooks, post_norm
from lens.circuits.graph import Graph
from lens.guard import limit, require
from lens.hooks import given_outputs
from lens.memory import forward_bytes
from lens.model.kv_cache import KVCache
from lens.patching.engine import CPU_MAX_TOKENS, DEFAULT_MEMORY_BUDGET, _bytes_per_copy, _kv_prefix
from lens.patching.metrics import _wide


def row_metric(metric, n_pos: int) -> tuple[list[int] | None, Callable[[torch.Tensor], torch.Tensor]]:
    """(positions the metric reads or None for all, fn: logits [..., batch, k, d_vocab] → [..., batch]),
    the metric's value per prompt. A prompt set's row metric (`per_row`, `rows`: each row read at its own
    position) and lens.patching's Metric (`reduce`) give rows directly; any other callable
    `metric(logits [batch, pos, d_vocab]) -> scalar` is called on each row."""
    if getattr(metric, "per_row", False) and hasattr(metric, "restrict"):
        positions, inner = metric.restrict(n_pos)
        return positions, inner.rows
    if hasattr(metric, "reduce") and hasattr(metric, "restrict"):
        positions, inner = metric.restrict(n_pos)
        return positions, lambda logits: _wide(inner.reduce(logits))

    def per_row(logits):
        lead = logits.shape[:-3]
        flat = logits.reshape(-1, *logits.shape[-3:])
        values = [torch.as_tensor(metric(copy[b: b + 1])).reshape(()) for copy in flat for b in range(copy.shape[0])]
        return torch.stack(values).view(*lead, logits.shape[-3])
    return None, per_row


@dataclass
class _Plan:
    """One circuit's edit of one receiver group: Σ_s weights[s, r] · delta_s (plus the running total of all
    deltas when `flip`: the circuit keeps few edges, so it is 'all out' minus those). Under post-norms the
    heads are left to `normed`: (layer, receivers reading all its heads from the reference [n_full],
    receivers reading some [n_part], their weights [n_heads, n_part])."""

    flip: bool
    senders: torch.Tensor  # [n_s] sender indices
    weights: torch.Tensor  # [n_s, n_receivers in the group]
    normed: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]


def _normed(graph: Graph, w: torch.Tensor, computed: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The post-normed layers a receiver group's weights w [prefix, R_g] touch (see _Plan); a layer whose
    attention is not computed (`computed` [n_senders] bool) is read from the reference whole and adds nothing."""
    out = []
    for layer in range(graph.n_layers):
        first = graph.head(layer, 0)
        if first >= w.shape[0]:
            break
        if not computed[first]:
            continue
        block = w[first: first + graph.n_heads]  # [H, R_g]
        full = (block == 1).all(0)
        part = ~full & (block != 0).any(0)
        if full.any() or part.any():
            part_index = part.nonzero().flatten()
            out.append((layer, full.nonzero().flatten(), part_index, block[:, part_index]))
    return out


def _live(graph: Graph, off: torch.Tensor) -> torch.Tensor:
    """[C, n_senders] bool: the senders some receiver reads (wholly or partly) from this run, per circuit.
    The output of any other sender is never read, so it may as well be the reference's."""
    return ((off != 1) & graph.valid).any(2)


def _computed(graph: Graph, live: torch.Tensor) -> torch.Tensor:
    """[n_senders] bool: the senders a forward computes for circuits whose live senders are `live` [C, S]:
    the input, every head of a layer with a live head (a layer's attention runs whole), every live MLP."""
    live = live.any(0)
    heads = live[1:].view(graph.n_layers, graph.n_heads + 1)
    computed = torch.cat([heads[:, :-1].any(1, keepdim=True).expand(-1, graph.n_heads), heads[:, -1:]], 1)
    return torch.cat([torch.ones(1, dtype=torch.bool), computed.flatten()])


def _work(model, graph: Graph, computed: torch.Tensor) -> int:
    """The weights a forward computing these senders multiplies per token (the attention of a layer with a
    computed head, each computed MLP, the embeddings and unembedding counted as one layer): its cost."""
    cfg = model.cfg
    attn = cfg.d_model * cfg.d_head * (2 * cfg.n_heads + 2 * graph.n_kv_heads)
    mlp = (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_mlp
    heads = computed[1:].view(graph.n_layers, graph.n_heads + 1)
    return int(heads[:, 0].sum()) * attn + int(heads[:, -1].sum()) * mlp + attn + mlp


def _skipped(graph: Graph, computed: torch.Tensor) -> frozenset[tuple[int, str]]:
    """The components (layer, "attn" | "mlp") a forward leaves out."""
    return frozenset((layer, part) for layer in range(graph.n_layers)
                     for part, sender in (("attn", graph.head(layer, 0)), ("mlp", graph.mlp(layer)))
                     if not computed[sender])


def _plans(graph: Graph, off: torch.Tensor, post_norms: bool, computed: torch.Tensor) -> list[list[_Plan | None]]:
    """plans[group][circuit] for off [C, S, R], over the senders the forward computes (`computed` [S] bool;
    the others read as their reference output in every copy, so their differences are 0). A receiver of a
    component that is not computed gets no plan."""
    heads = torch.zeros(graph.n_senders, dtype=torch.bool)
    if post_norms:
        for layer in range(graph.n_layers):
            heads[graph.head(layer, 0): graph.head(layer, 0) + graph.n_heads] = True
    plans = []
    for layer, kind, rows in graph.groups():
        prefix = graph.senders_before(layer, kind)
        block = off[:, :prefix, rows.start: rows.stop]  # [C, prefix, R_g]
        linear = ~heads[:prefix] & computed[:prefix]
        part = component(kind)
        fed = graph.head(layer, 0) if part == "attn" else graph.mlp(layer) if part == "mlp" else 0
        if not computed[fed]:
            plans.append([None] * len(block))
            continue
        group = []
        for w in block:
            normed = _normed(graph, w, computed) if post_norms else []
            w = w[linear]
            n_on, n_not_one = int((w != 0).sum()), int((w != 1).sum())
            if n_on == 0 and not normed:
                group.append(None)
                continue
            flip = n_not_one < n_on
            weights = w - 1 if flip else w
            senders = linear[:prefix].nonzero().flatten()[(weights != 0).any(1)]
            group.append(_Plan(flip, senders, weights[(weights != 0).any(1)], normed))
        plans.append(group)
    return plans


# Circuits share a forward when computing what any of them needs for all of them costs at most this much more
# than computing each one's own (the larger batch runs the weights no faster per copy on CPU past a few
# hundred tokens)
SHARED_WORK = 1.1


def circuits_per_forward(model, graph: Graph, batch: int, n_pos: int, n_logit_pos: int, n_deltas: int,
                         memory_budget: int | None, kept: int = 0) -> int:
    """Circuit copies per forward of n_pos positions after `kept` cached ones (each copy holds their cache)."""
    budget = limit(DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)
    per_copy = 2 * _bytes_per_copy(model, batch, n_pos, kept + n_pos, n_logit_pos)  # per-head inputs double it
    per_copy += forward_bytes(model, batch, n_pos, kept + n_pos, False, kept + n_pos if kept else 0)["KV cache"]
    # + the running totals, one layer's early edits (a row per receiver), each post-normed layer's sum and norm
    kept = n_deltas + 2 + graph.per_layer + (2 * graph.n_layers if model.cfg.post_norms else 0)
    per_copy += kept * batch * n_pos * model.cfg.d_model * model.dtype.itemsize
    copies = max(1, budget // per_copy)
    if model.device.type == "cpu":
        copies = min(copies, max(1, CPU_MAX_TOKENS // (batch * n_pos)))
    return copies


def run_circuits(model, graph: Graph, tokens: torch.Tensor, mask: torch.Tensor | None, reference: torch.Tensor,
                 off: torch.Tensor, metric, memory_budget: int | None = None,
                 prefix: tuple[int, KVCache] | None = None) -> torch.Tensor:
    """The metric per prompt with each circuit: [n_circuits, batch].
    tokens [batch, pos] (this run's input); reference [n_senders, batch or 1, pos, d_model] the outputs
    receivers read for edges that are off; off [n_circuits, n_senders, n_receivers] as above.
    prefix (n, kv): the first n positions of this run and the reference run are the same tokens, and kv holds
    the reference run's keys and values: every sender's difference is 0 there, so no circuit changes those
    positions, and the circuits' forwards run the later positions only, attending to kv's (when the metric
    reads none of the first n)."""
    batch, n_pos = tokens.shape
    if off.dim() == 2:
        off = off[None]
    expected = (graph.n_senders, graph.n_receivers)
    if tuple(off.shape[1:]) != expected:
        raise ValueError(f"circuit weights have shape {tuple(off.shape[1:])}; this graph needs {expected}")
    off = (off * graph.valid).to(model.dtype)
    positions, per_row = row_metric(metric, n_pos)
    kept = 0  # positions run once, in the reference run
    if prefix is not None and positions is not None and reference.shape[1] == batch:
        kept = min(prefix[0], *positions)
    if kept:
        tokens, reference, positions = tokens[:, kept:], reference[:, :, kept:], [p - kept for p in positions]
        n_pos -= kept
    n_logit = n_pos if positions is None else len(positions)
    off = off.cpu()
    live = _live(graph, off)
    values = []
    start = 0
    work = [_work(model, graph, _computed(graph, live[c: c + 1])) for c in range(len(off))]
    while start < len(off):
        # Circuits share a forward while the budget holds the differences of the senders they compute between
        # them, and while computing all of those for each of them costs little more than each computing its own
        stop = start + 1
        while stop < len(off):
            computed = _computed(graph, live[start: stop + 1])
            copies = stop + 1 - start
            if copies > circuits_per_forward(model, graph, batch, n_pos, n_logit, int(computed.sum()), memory_budget,
                                             kept) \
                    or copies * _work(model, graph, computed) > SHARED_WORK * sum(work[start: stop + 1]):
                break
            stop += 1
        computed = _computed(graph, live[start:stop])
        plans = _plans(graph, off[start:stop], model.cfg.post_norms, computed)
        cache = _kv_prefix(model, prefix[1], batch, 0, kept, stop - start, mask) if kept else None
        values.append(_forward(model, graph, tokens, None if mask is None else mask[:, kept:], reference, plans,
                               computed, stop - start, positions, per_row, cache))
        start = stop
    return torch.cat(values)


def _given(model, graph: Graph, reference: torch.Tensor, skipped, rows: int) -> dict[str, torch.Tensor]:
    """The outputs of the components a forward skips, from the reference senders, for `rows` rows:
    an MLP's is its sender's; a layer's attention output is the sum of its heads' (+ b_O; under post-norms
    the norm of their terms)."""
    from lens.circuits.forward import post_norm
    out = {}
    for layer, part in skipped:
        if part == "mlp":
            value = reference[graph.mlp(layer)]
        else:
            value = reference[graph.head(layer, 0): graph.head(layer, 0) + graph.n_heads].sum(0)
            value = post_norm(model, layer, value) if model.cfg.post_norms else \
                value + model.weights.b_O[model.blocks[layer].slot].to(value.dtype)
        out[f"blocks.{layer}.hook_{part}_out"] = value.expand(rows // value.shape[0], *value.shape).flatten(0, 1) \
            if value.shape[0] != rows else value
    return out


def _needed(graph: Graph, plans) -> list[int]:
    """The senders whose differences some plan reads: its linear senders, and the heads of layers it splits."""
    needed = set()
    for group in plans:
        for p in group:
            if p is None:
                continue
            needed.update(int(s) for s in p.senders)
            for layer, _, part, _ in p.normed:
                if len(part):
                    needed.update(range(graph.head(layer, 0), graph.head(layer, 0) + graph.n_heads))
    return sorted(needed)


def _forward(model, graph, tokens, mask, reference, plans, computed, n_copies, positions, per_row,
             cache: KVCache | None) -> torch.Tensor:
    """The metric per prompt for n_copies circuits in one forward: [n_copies, batch]. Components no copy
    computes (`computed`) are skipped, their outputs given from the reference (lens.hooks.given_outputs).
    cache: the keys and values of positions before `tokens`, for every copy."""
    batch, n_pos = tokens.shape
    d_model = model.cfg.d_model
    post_norms = model.cfg.post_norms
    needed = _needed(graph, plans)
    slot = torch.full((graph.n_senders,), -1, dtype=torch.long)
    slot[needed] = torch.arange(len(needed))
    needed_t = torch.tensor(needed, dtype=torch.long)
    # [copies, needed senders, batch, pos, d_model]: one copy's deltas of a sender prefix are one matrix
    require(n_copies * len(needed) * batch * n_pos * d_model * model.dtype.itemsize,
            "the sender differences of the circuits in one forward", "use fewer or shorter prompts")
    deltas = torch.empty(n_copies, len(needed), batch, n_pos, d_model, dtype=model.dtype, device=model.device)
    total = torch.zeros(n_copies, batch, n_pos, d_model, dtype=model.dtype, device=model.device)
    state = {"total": total, "at_attn": (-1, total)}  # at_attn: (layer, the total before its heads)
    groups = graph.groups()
    plan_of = {(layer, kind): i for i, (layer, kind, _) in enumerate(groups)}

    head_layer = {graph.head(layer, 0): layer for layer in range(graph.n_layers)}  # a layer's first head → layer
    layer_sum, layer_change = {}, {}  # post-norms: per layer, this run's Σ_h term_h, and norm(ref) - norm(this)

    def on_sender(first, x):  # x [copies * batch, pos, n, d_model]
        n = x.shape[2]
        ref = reference[first: first + n].permute(1, 2, 0, 3)  # [batch or 1, pos, n, d_model]
        this = x.view(n_copies, batch, n_pos, n, d_model)
        delta = ref - this
        if first in head_layer:
            state["at_attn"] = (head_layer[first], state["total"])
        if post_norms and first in head_layer:
            layer = head_layer[first]
            layer_sum[layer] = this.sum(3)
            layer_change[layer] = post_norm(model, layer, ref.sum(2)) - post_norm(model, layer, layer_sum[layer])
        else:
            state["total"] = state["total"] + delta.sum(3)
        for i in range(n):
            if slot[first + i] >= 0:
                deltas[:, slot[first + i]] = delta[:, :, :, i]

    def normed_edit(c: int, layer: int, full, part, w, out_c) -> None:
        """Add, for receivers reading layer's heads (all or some) from the reference, the change of the
        layer's normed output they read (out_c [batch, pos, R_g, d_model])."""
        if len(full):
            out_c[:, :, full] += layer_change[layer][c][:, :, None]
        if len(part):
            cols = slot[graph.head(layer, 0): graph.head(layer, 0) + graph.n_heads]
            mixed = torch.einsum("hr,hbpd->bprd", w.to(deltas.device, deltas.dtype), deltas[c, cols])
            mixed = mixed + layer_sum[layer][c][:, :, None]  # [batch, pos, n_part, d_model]
            this = post_norm(model, layer, layer_sum[layer][c])[:, :, None]
            out_c[:, :, part] += post_norm(model, layer, mixed) - this

    layer_groups: dict[int, list[tuple[str, range]]] = {}
    for layer, kind, rows in groups:
        layer_groups.setdefault(layer, []).append((kind, rows))
    early: dict[int, list[dict[str, torch.Tensor]]] = {}  # layer → per copy, kind → [n_rows, batch*pos*d_model]

    def early_senders(layer: int) -> int:
        """How many of the needed senders (deltas' rows) come before the layer's attention."""
        return int(torch.searchsorted(needed_t, graph.senders_before(layer, "q")))

    def combine(c: int, plan: _Plan, lo: int, hi: int) -> torch.Tensor | None:
        """Σ_s weights[s, r] delta_s over one copy's needed senders in rows lo..hi of `deltas`: [hi - lo, R_g]
        weights (None when the plan reads none of them)."""
        cols = slot[plan.senders]
        here = (cols >= lo) & (cols < hi)
        if not bool(here.any()):
            return None
        w = torch.zeros(hi - lo, plan.weights.shape[1], dtype=deltas.dtype)
        w[cols[here] - lo] = plan.weights[here].to(deltas.dtype)
        return w

    def product(c: int, lo: int, w: torch.Tensor) -> torch.Tensor:
        """deltas[c, lo: lo + len(w)] weighted by w [n, R]: [batch * pos * d_model, R]. As deltas^T @ w, the
        orientation BLAS runs near memory speed for a few columns; widths 2..15 are padded to 16, which
        the CPU kernels run faster than the odd widths (measured on 2 cores: 24 ms against 45-80 ms)."""
        width = w.shape[1]
        if 1 < width < 16:
            w = torch.cat([w, w.new_zeros(len(w), 16 - width)], 1)
        return (deltas[c, lo: lo + len(w)].flatten(1).T @ w.to(deltas.device))[:, :width]

    def early_edits(layer: int) -> list[dict[str, torch.Tensor]]:
        """Σ_s weights[s, r] delta_s over the senders before the layer's attention, for every receiver group of
        the layer (q, k, v and the MLP's share) in one matmul per copy: the differences are streamed through
        memory once per layer, not once per group. Computed at the layer's first edited receiver."""
        if layer not in early:
            n_early = early_senders(layer)
            per_copy = []
            for c in range(n_copies):
                columns, kinds = [], []
                for kind, _ in layer_groups[layer]:
                    plan = plans[plan_of[layer, kind]][c]
                    w = None if plan is None else combine(c, plan, 0, n_early)
                    if w is not None:
                        columns.append(w)
                        kinds.append((kind, w.shape[1]))
                edits = {}
                if columns:
                    edits = dict(zip([k for k, _ in kinds], product(c, 0, torch.cat(columns, 1)).split(
                        [n for _, n in kinds], dim=1), strict=True))
                per_copy.append(edits)
            early[layer] = per_copy
        return early[layer]

    def edit_of(plan: _Plan, c: int, layer: int, kind: str) -> torch.Tensor | None:
        """Σ_s weights[s, r] delta_s for one copy: [batch * pos * d_model, n_rows] (the senders before the
        layer's attention from early_edits, the layer's own heads for a sequential block's MLP here)."""
        if kind == "logits":  # once per forward: its own matmul over every needed sender
            return product(c, 0, combine(c, plan, 0, len(needed)))
        edit = early_edits(layer)[c].pop(kind, None)  # each group's rows are read once: free them
        n_early, n_before = early_senders(layer), int(torch.searchsorted(needed_t, graph.senders_before(layer, kind)))
        late = combine(c, plan, n_early, n_before)  # a sequential block's MLP reads its own layer's heads too
        if late is not None:
            extra = product(c, n_early, late)
            edit = extra if edit is None else edit + extra
        return edit

    def on_receiver(layer, kind, rows, x):  # x [copies * batch, pos, R_g, d_model]
        total = state["total"]
        if kind == "mlp" and graph.parallel and state["at_attn"][0] == layer:  # a parallel MLP reads no heads of
            total = state["at_attn"][1]  # its own layer (when the layer's attention is skipped, none were added)
        group = plans[plan_of[layer, kind]]
        if all(p is None for p in group):
            return None
        n_rows = x.shape[2]
        out = x.clone().view(n_copies, batch, n_pos, n_rows, d_model)
        for c, plan in enumerate(group):
            if plan is None:
                continue
            edit = edit_of(plan, c, layer, kind) if len(plan.senders) else None
            if edit is not None:
                out[c] += edit.view(batch, n_pos, d_model, n_rows).transpose(2, 3)
            if plan.flip:
                out[c] += total[c][:, :, None]
            for normed_layer, full, part, w in plan.normed:
                normed_edit(c, normed_layer, full, part, w, out[c])
        return out.view_as(x)

    # Receiver groups no circuit of this forward edits run unhooked
    edited = {(layer, kind) for (layer, kind, _), group in zip(groups, plans, strict=True)
              if any(p is not None for p in group)}
    skipped = _skipped(graph, computed)
    keep = {}
    hooks = graph_hooks(model, graph, on_sender, on_receiver, lambda layer, kind: (layer, kind) in edited, skipped)
    hooks.append(final_resid_hook(graph, keep))
    rows = tokens.repeat(n_copies, 1)
    rows_mask = None if mask is None else mask.repeat(n_copies, 1)
    given = _given(model, graph, reference, skipped, len(rows))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks), given_outputs(model, given):
        model(rows, attention_mask=rows_mask, return_type=None, past_kv_cache=cache)
        resid = keep["resid"] if positions is None else keep["resid"][:, positions]
        logits = model.final_logits(resid).view(n_copies, batch, resid.shape[1], -1)
        return per_row(logits).double().cpu()
