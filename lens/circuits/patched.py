"""Edge-patched forwards: many circuits at once, each receiver reading some senders from this run and
the rest from a reference run (the corrupted prompts, or a mean).

A circuit is given as `off` weights [n_senders, n_receivers]: 0 = the edge is in the circuit (the
receiver reads the sender's output from this run), 1 = it is out (the receiver reads the reference
output instead), values between mix the two (used for directional derivatives). Receiver r then reads

    input_r = resid_r(this run) + Σ_s off[s, r] · (reference_s - this_s)

which is the clean run when nothing is off and the reference run when everything is (the outputs of
the senders before r sum to resid_r up to prompt-independent terms). The sum runs over the edges that
differ from the nearest of "all in" and "all out" only: a circuit of E edges costs about E axpys of
[batch, pos, d_model] per forward, not n_senders × n_receivers. Copies of the batch, one per circuit,
share a forward, sized to a memory budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lens.circuits.forward import final_resid_hook, graph_hooks
from lens.circuits.graph import Graph
from lens.guard import limit, require
from lens.patching.engine import CPU_MAX_TOKENS, DEFAULT_MEMORY_BUDGET, _bytes_per_copy
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
    deltas when `flip`: the circuit keeps few edges, so it is 'all out' minus those)."""

    flip: bool
    senders: torch.Tensor  # [n_s] sender indices
    weights: torch.Tensor  # [n_s, n_receivers in the group]


def _plans(graph: Graph, off: torch.Tensor) -> list[list[_Plan | None]]:
    """plans[group][circuit] for off [C, S, R]."""
    plans = []
    for layer, kind, rows in graph.groups():
        prefix = graph.senders_before(layer, kind)
        block = off[:, :prefix, rows.start: rows.stop]  # [C, prefix, R_g]
        group = []
        for w in block:
            n_on, n_not_one = int((w != 0).sum()), int((w != 1).sum())
            if n_on == 0:
                group.append(None)
                continue
            flip = n_not_one < n_on
            weights = w - 1 if flip else w
            senders = (weights != 0).any(1).nonzero().flatten()
            group.append(_Plan(flip, senders, weights[senders]))
        plans.append(group)
    return plans


def circuits_per_forward(model, graph: Graph, batch: int, n_pos: int, n_logit_pos: int, n_deltas: int,
                         memory_budget: int | None) -> int:
    budget = limit(DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)
    per_copy = 2 * _bytes_per_copy(model, batch, n_pos, n_pos, n_logit_pos)  # per-head inputs double it
    per_copy += (n_deltas + 2) * batch * n_pos * model.cfg.d_model * model.dtype.itemsize
    copies = max(1, budget // per_copy)
    if model.device.type == "cpu":
        copies = min(copies, max(1, CPU_MAX_TOKENS // (batch * n_pos)))
    return copies


def run_circuits(model, graph: Graph, tokens: torch.Tensor, mask: torch.Tensor | None, reference: torch.Tensor,
                 off: torch.Tensor, metric, memory_budget: int | None = None) -> torch.Tensor:
    """The metric per prompt with each circuit: [n_circuits, batch].
    tokens [batch, pos] (this run's input); reference [n_senders, batch or 1, pos, d_model] the outputs
    receivers read for edges that are off; off [n_circuits, n_senders, n_receivers] as above."""
    batch, n_pos = tokens.shape
    if off.dim() == 2:
        off = off[None]
    expected = (graph.n_senders, graph.n_receivers)
    if tuple(off.shape[1:]) != expected:
        raise ValueError(f"circuit weights have shape {tuple(off.shape[1:])}; this graph needs {expected}")
    off = (off * graph.valid).to(model.dtype)
    positions, per_row = row_metric(metric, n_pos)
    n_logit = n_pos if positions is None else len(positions)
    plans = _plans(graph, off.cpu())
    values = []
    start = 0
    while start < len(off):
        needed = sorted({int(s) for group in plans for p in group[start:] if p is not None for s in p.senders})
        chunk = circuits_per_forward(model, graph, batch, n_pos, n_logit, len(needed), memory_budget)
        stop = min(len(off), start + chunk)
        chunk_plans = [group[start:stop] for group in plans]
        values.append(_forward(model, graph, tokens, mask, reference, chunk_plans, stop - start, positions, per_row))
        start = stop
    return torch.cat(values)


def _forward(model, graph, tokens, mask, reference, plans, n_copies, positions, per_row) -> torch.Tensor:
    batch, n_pos = tokens.shape
    d_model = model.cfg.d_model
    needed = sorted({int(s) for group in plans for p in group if p is not None for s in p.senders})
    slot = torch.full((graph.n_senders,), -1, dtype=torch.long)
    slot[needed] = torch.arange(len(needed))
    needed_t = torch.tensor(needed, dtype=torch.long)
    # [copies, needed senders, batch, pos, d_model]: one copy's deltas of a sender prefix are one matrix
    require(n_copies * len(needed) * batch * n_pos * d_model * model.dtype.itemsize,
            "the sender differences of the circuits in one forward", "use fewer or shorter prompts")
    deltas = torch.empty(n_copies, len(needed), batch, n_pos, d_model, dtype=model.dtype, device=model.device)
    total = torch.zeros(n_copies, batch, n_pos, d_model, dtype=model.dtype, device=model.device)
    state = {"total": total, "at_attn": total}
    groups = graph.groups()
    plan_of = {(layer, kind): i for i, (layer, kind, _) in enumerate(groups)}

    def on_sender(first, x):  # x [copies * batch, pos, n, d_model]
        n = x.shape[2]
        ref = reference[first: first + n].permute(1, 2, 0, 3)  # [batch or 1, pos, n, d_model]
        delta = ref - x.view(n_copies, batch, n_pos, n, d_model)
        state["total"] = state["total"] + delta.sum(3)
        for i in range(n):
            if slot[first + i] >= 0:
                deltas[:, slot[first + i]] = delta[:, :, :, i]

    def edit_of(plan: _Plan, c: int, prefix: int, n_rows: int) -> torch.Tensor:
        """Σ_s weights[s, r] delta_s for one copy: [n_rows, batch * pos * d_model]."""
        cols = slot[plan.senders]
        n_prefix = int(torch.searchsorted(needed_t, prefix))
        w = plan.weights.to(deltas.device)
        if len(cols) * 2 >= n_prefix:  # most of the prefix: one matmul over a view, no gather
            full = torch.zeros(n_prefix, n_rows, dtype=w.dtype, device=w.device)
            full[cols] = w
            return full.T @ deltas[c, :n_prefix].flatten(1)
        return w.T @ deltas[c, cols].flatten(1)

    def on_receiver(layer, kind, rows, x):  # x [copies * batch, pos, R_g, d_model]
        if kind == "q":
            state["at_attn"] = state["total"]
        total = state["at_attn"] if kind == "mlp" and graph.parallel else state["total"]
        group = plans[plan_of[layer, kind]]
        if all(p is None for p in group):
            return None
        n_rows = x.shape[2]
        prefix = graph.senders_before(layer, kind)
        out = x.clone().view(n_copies, batch, n_pos, n_rows, d_model)
        for c, plan in enumerate(group):
            if plan is None:
                continue
            if len(plan.senders):
                out[c] += edit_of(plan, c, prefix, n_rows).view(n_rows, batch, n_pos, d_model).permute(1, 2, 0, 3)
            if plan.flip:
                out[c] += total[c][:, :, None]
        return out.view_as(x)

    keep = {}
    hooks = graph_hooks(model, graph, on_sender, on_receiver) + [final_resid_hook(graph, keep)]
    rows = tokens.repeat(n_copies, 1)
    rows_mask = None if mask is None else mask.repeat(n_copies, 1)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(rows, attention_mask=rows_mask, return_type=None)
        resid = keep["resid"] if positions is None else keep["resid"][:, positions]
        logits = model.final_logits(resid).view(n_copies, batch, resid.shape[1], -1)
        return per_row(logits).double().cpu()
