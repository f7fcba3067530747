"""One-call investigation of a behaviour over a prompt set: the standard battery, written up as Markdown.

    report = lens.investigate(model, make_dataset(model, "ioi", n=50), "logit_diff", out_dir="reports/ioi")
    print(report.summary()); report.path  # reports/ioi/report.md, with its PNGs beside it

Sections, each figure a mean over the set's rows with its spread (std, 95% interval of the mean, and on
how many rows the sign agrees; lens.data.Spread):
1. the task: the metric on clean and corrupted prompts, and how often the answer is the top token;
2. logit lens: the metric read from the residual stream after each layer (final norm + unembedding);
3. direct logit attribution by head: each head's direct effect on the metric's logit direction at the
   read position (answer - baseline with a baseline, else the answer), through the final norm's scale;
4. residual patching: the clean residual stream entering each layer at each of the set's named positions
   (each row its own position) patched into the corrupted run (lens.patching.patch over the set);
5. head patching: each head's clean output (every position) patched into the corrupted run;
   both normalised (0 = corrupted, 1 = clean) with the spread over rows the patching engine gives;
6. the circuit (lens.circuits.find_circuit, EAP-IG) and its exact faithfulness with a bootstrap spread,
   and which of its heads head patching also ranks highly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lens import plots
from lens.data.stats import Spread, spread

TOP = 5


@dataclass
class Investigation:
    path: Path  # the Markdown report
    facts: dict = field(default_factory=dict)  # the headline numbers, JSON-ready
    plots: list[str] = field(default_factory=list)
    grids: dict = field(default_factory=dict)  # logit_lens, dla: mean tensors; resid_patching, head_patching: PatchResults

    def summary(self) -> str:
        return "\n".join(f"- {line}" for line in self.facts.get("claims", [])) + f"\nreport: {self.path}"


def _rows_at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [batch, pos, ...] at one position per row → [batch, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), positions.to(x.device)]


def _direction(model, ps) -> torch.Tensor:
    """[batch, d_model] the unembedding direction of the metric per row."""
    W_U = model.W_U
    answer = W_U[:, ps.answer_ids.to(W_U.device)].T
    return answer if ps.baseline_ids is None else answer - W_U[:, ps.baseline_ids.to(W_U.device)].T


def _final_norm_linear(model, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The final norm applied to a part x [..., d_model] of a residual stream whose scale is fixed [..., 1]."""
    norm, w = model.ln_final, model.weights.ln_final_w.to(x.dtype) + model.ln_final.offset
    if norm.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return x / scale * w


def investigate(model, prompt_set, metric="logit_diff", out_dir="lens-investigation", method: str = "eap-ig",
                faithfulness: float = 0.8) -> Investigation:
    """Run the battery above on a prompt set with clean and corrupted prompts; write out_dir/report.md."""
    from lens.circuits import find_circuit
    from lens.data.metrics import RowMetric, as_row_metric

    ps = prompt_set
    if ps.corrupted_tokens is None:
        raise ValueError("investigate patches between clean and corrupted prompts; this set has none "
                         "(noise corruption): build one with corrupted prompts")
    metric = as_row_metric(ps, metric)
    if not isinstance(metric, RowMetric) or getattr(metric, "flat_at_clean", False):
        raise ValueError(f"investigate reads an answer metric at one position per row (logit lens, DLA along the "
                         f"answer's direction): use 'logit_diff', 'logit', 'prob' or 'logprob', not {metric.name!r}")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    dev = model.device
    clean, corrupted = ps.clean_tokens.to(dev), ps.corrupted_tokens.to(dev)
    mask = None if bool(ps.attention_mask.all()) else ps.attention_mask.to(dev)
    read = metric.positions
    cfg, n = model.cfg, len(ps)
    claims, sections, drawn = [], [], []

    # 1. the task
    names = ["hook_embed"] + [f"blocks.{i}.hook_resid_pre" for i in range(cfg.n_layers)] + \
        [f"blocks.{cfg.n_layers - 1}.hook_resid_post", "ln_final.hook_scale"] + \
        [f"blocks.{i}.attn.hook_result" for i in range(cfg.n_layers)]
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, attention_mask=mask, names_filter=names)
        corrupted_logits = model(corrupted, attention_mask=mask)
    clean_rows, corrupted_rows = metric.rows(clean_logits).double().cpu(), metric.rows(corrupted_logits).double().cpu()
    top = _rows_at(clean_logits, read).argmax(-1).cpu() == ps.answer_ids
    clean_s, corrupted_s = spread(clean_rows), spread(corrupted_rows)
    does = clean_s.ci95[0] > corrupted_s.ci95[1] and int(top.sum()) >= n / 2
    claims.append(f"the model {'does' if does else 'does not clearly do'} the task: {metric.name} is {clean_s.text()} on clean prompts and "
                  f"{corrupted_s.text()} on corrupted ones; the answer is the top token on {int(top.sum())}/{n}")
    sections.append(("Does the model do the task?", claims[-1]))

    # 2. logit lens
    lens_rows = []
    with torch.no_grad():
        for layer in range(cfg.n_layers + 1):
            resid = cache[f"blocks.{layer}.hook_resid_pre"] if layer < cfg.n_layers else \
                cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
            logits = model.final_logits(_rows_at(resid, read)[:, None])[:, 0]  # [batch, d_vocab]
            lens_rows.append(metric.reduce(logits).double().cpu())
    lens_rows = torch.stack(lens_rows)  # [n_layers + 1, batch]
    lens_spreads = [spread(r) for r in lens_rows]
    half = next((i for i, s in enumerate(lens_spreads) if s.mean >= 0.5 * clean_s.mean), cfg.n_layers) \
        if clean_s.mean > 0 else None
    drawn.append(_line([s.mean for s in lens_spreads], [s.ci95 for s in lens_spreads], out / "logit_lens.png",
                       f"logit lens: {metric.name} read after each layer (mean, 95% CI, {n} prompts)",
                       "layers applied", metric.name))
    lens_claim = "logit lens: " + (f"{metric.name} first reaches half its final value after {half} layers "
                                   f"({lens_spreads[half].text()})" if half is not None else
                                   f"{metric.name} is not positive on clean prompts, so no layer reaches it")
    claims.append(lens_claim)
    sections.append(("Logit lens", lens_claim + f"\n\n![logit lens]({Path(drawn[-1]).name})"))

    # 3. DLA by head
    direction = _direction(model, ps).to(dev)  # [batch, d_model]
    scale = _rows_at(cache["ln_final.hook_scale"], read)  # [batch, 1]
    with torch.no_grad():
        dla = torch.stack([(_final_norm_linear(model, _rows_at(cache[f"blocks.{layer}.attn.hook_result"], read),
                                               scale[:, None]) * direction[:, None]).sum(-1)
                           for layer in range(cfg.n_layers)], 1).double().cpu()  # [batch, n_layers, n_heads]
    dla_mean = dla.mean(0)
    order = dla_mean.flatten().abs().argsort(descending=True)[:TOP].tolist()
    dla_lines = [f"L{i // cfg.n_heads}H{i % cfg.n_heads}: {spread(dla[:, i // cfg.n_heads, i % cfg.n_heads]).text()}"
                 for i in order]
    drawn.append(plots.heatmap(dla_mean.numpy(), [str(i) for i in range(cfg.n_layers)],
                               [str(h) for h in range(cfg.n_heads)], f"direct logit attribution per head to "
                               f"{metric.name} (mean over {n} prompts)", "logits", out / "dla_heads.png",
                               xlabel="head", ylabel="layer"))
    claims.append("largest direct effects: " + "; ".join(dla_lines[:3]))
    sections.append(("Direct logit attribution by head", "\n".join(f"- {line}" for line in dla_lines)
                     + f"\n\n![DLA]({Path(drawn[-1]).name})"))

    # 4. residual patching at the named positions; 5. head patching (the batched engine over the set)
    from lens import patching
    resid = patching.patch(model, ps, metric=metric, what="resid_pre", positions=ps.position_names, top_k=TOP,
                           progress=False)
    drawn.append(resid.plot(out / "resid_patching.png"))
    best = resid.top[0]
    resid_claim = f"residual patching: the clean stream {_where(best.label)} restores {_restores(best)}"
    claims.append(resid_claim)
    sections.append(("Residual stream patching", resid_claim + f"\n\n![residual patching]({Path(drawn[-1]).name})"))

    heads = patching.patch(model, ps, metric=metric, what="heads", top_k=TOP, progress=False)
    drawn.append(heads.plot(out / "head_patching.png"))
    patched_heads = [h.label for h in heads.top]
    head_lines = [f"{h.label}: restores {_restores(h)}" for h in heads.top]
    claims.append("head patching: " + "; ".join(head_lines[:3]))
    sections.append(("Head patching", "\n".join(f"- {line}" for line in head_lines)
                     + f"\n\n![head patching]({Path(drawn[-1]).name})"))

    # 6. the circuit
    found = find_circuit(model, ps, metric=metric, method=method, faithfulness=faithfulness)
    drawn.append(found.plot(out / "circuit.png"))
    found.circuit.save(out / "circuit.json")
    f = found.faithfulness
    circuit_heads = [node for node in found.circuit.nodes if "H" in node]
    shared = [h for h in patched_heads if h in circuit_heads]
    circuit_claim = (f"circuit ({found.scores.method}): {f.n_edges} edges over {len(found.circuit.nodes)} nodes "
                     f"carry {f.value:.0%} ± {f.std:.0%} (95% CI {f.low:.0%}..{f.high:.0%}) of the {metric.name}; "
                     f"{len(shared)}/{len(patched_heads)} of head patching's top heads are in it")
    claims.append(circuit_claim)
    curve = "\n".join(f"| {e} | {v:.3f} ± {s:.3f} |" for e, v, s in found.curve.points())
    sections.append(("The circuit", circuit_claim + f"\n\nHeads in the circuit: {', '.join(circuit_heads[:40])}"
                     + f"\n\n| edges | faithfulness |\n|---|---|\n{curve}\n\n![circuit]({Path(drawn[-1]).name})"
                     + "\n\nThe circuit's edges are in circuit.json (lens.circuits.Circuit.load)."))

    text = [f"# Investigation: {ps.task or 'prompt set'} on {cfg.model_type} ({n} prompts)", "",
            f"Metric: {metric.name}. Spreads: std over prompts and the 95% interval of the mean; faithfulness: "
            f"bootstrap over prompts.", "", "## Summary", ""] + [f"- {c}" for c in claims]
    for title, body in sections:
        text += ["", f"## {title}", "", body]
    path = out / "report.md"
    path.write_text("\n".join(text) + "\n")
    facts = {"claims": claims, "clean": clean_s.model_dump(), "corrupted": corrupted_s.model_dump(),
             "top_heads_patching": patched_heads, "circuit_edges": f.n_edges, "faithfulness": f.to_dict(),
             "circuit_heads": circuit_heads[:20]}
    grids = {"logit_lens": lens_rows.mean(1), "dla": dla_mean, "dla_rows": dla, "resid_patching": resid, "head_patching": heads}
    return Investigation(path, facts, drawn, grids)


def _restores(hotspot) -> str:
    """A hotspot's normalised effect with its spread over the set."""
    if hotspot.spread is not None and hotspot.spread.n > 1:
        return hotspot.spread.text(percent=hotspot.normalised is not None)
    return f"{hotspot.normalised:.0%}" if hotspot.normalised is not None else f"{hotspot.effect:+.3f}"


def _where(label: str) -> str:
    """A residual hotspot's label "L12 @3 'S2'" → "at 'S2' entering layer 12"."""
    match = re.match(r"L(\d+) @\s*(?:\d+\s+)?(.*)", label)
    return f"at {match.group(2)} entering layer {match.group(1)}" if match else label


def _line(values, intervals, path, title: str, xlabel: str, ylabel: str) -> str:
    fig, ax = plots.plt.subplots(figsize=(9, 5), layout="constrained")
    xs = list(range(len(values)))
    ax.plot(xs, values, marker="o")
    ax.fill_between(xs, [lo for lo, _ in intervals], [hi for _, hi in intervals], alpha=0.25)
    ax.axhline(0, color="#888888", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(plots._short(title), fontsize=11)
    return plots._save(fig, path)


__all__ = ["Investigation", "investigate", "Spread"]
