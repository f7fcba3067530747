"""Each SKILL.md workflow's claim over a prompt set on smollm2-135m, with its mean, spread and agreement, so every
figure the skill quotes comes from a run anyone can repeat:

    python -m bench.claims [--quick] [--only patching heads induction lens tracing steering circuit]

Sets are generated (lens.data.make_dataset, seeded) and filtered to the rows the model gets right (answer
ranked first); each section prints its headline line and returns the numbers behind it:
1. activation patching: the clean residual stream at IOI's named positions (IO, S1, S2, END) per layer, the
   position that restores most per layer, and the hand-over from S2 to END;
2. IOI heads: head patching's top heads (% of the logit difference restored, 95% CI half-width, sign
   agreement), direct logit attribution by head, and zero ablation of the top heads (one by one, together);
3. induction heads: scores over an induction set, and necessity as the loss over the repeated span with
   the top heads zero-ablated (against heads of the same layers that score lowest);
4. logit lens over factual recall: per layer on how many rows the answer is the top token, p(answer);
   causal tracing with noise on the subject (Meng et al. 2022): the peak restoration at the subject and at END;
5. steering: the shift of logit(' great') - logit(' terrible') over sentiment prompts per coefficient;
7. the IOI circuit (EAP-IG, target faithfulness 0.8): edges, nodes, exact faithfulness with its bootstrap
   spread, the faithfulness curve, and its heads against head patching's top heads.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from lens import HookedTransformer
from lens.analysis import detect_heads, direct_logit_attribution, logit_lens, steer, steering_vector
from lens.analysis.heads import repeated_tokens
from lens.circuits import find_circuit
from lens.data import PromptSet, causal_trace, make_dataset, row_metric, spread
from lens.data.stats import Spread
from lens.patching import ablate, ablation_hooks, patch

N = 50  # rows per set, after filtering
SEED = 0
IOI_POSITIONS = ["IO", "S1", "S2", "END"]
SENTIMENT_TEMPLATES = ("I think the {} was", "Honestly, the {} was", "We all agreed that the {} was",
                       "My friend said the {} was")
SENTIMENT_NOUNS = ("movie", "book", "food", "concert", "hotel", "game", "show", "trip", "meal", "album", "play",
                   "service")
POSITIVE = ["I love it.", "This is wonderful.", "What a great day.", "I am so happy."]
NEGATIVE = ["I hate it.", "This is terrible.", "What an awful day.", "I am so sad."]
HEAD = re.compile(r"L(\d+)H(\d+)$")


def half(s: Spread) -> float:
    """The half-width of the 95% interval of the mean."""
    return (s.ci95[1] - s.ci95[0]) / 2


def pct(s: Spread, value: float | None = None) -> str:
    """"44% ± 4%, positive on 50/50" (value: the figure to show, default the spread's mean)."""
    sign = "positive" if s.mean >= 0 else "negative"
    return f"{100 * (s.mean if value is None else value):.0f}% ± {100 * half(s):.0f}%, {sign} on {s.agreement}/{s.n}"


def num(s: Spread, digits: int = 2) -> str:
    sign = "positive" if s.mean >= 0 else "negative"
    return f"{s.mean:+.{digits}f} ± {half(s):.{digits}f}, {sign} on {s.agreement}/{s.n}"


def filtered(model, task: str, n: int = N, seed: int = SEED, **options) -> tuple[PromptSet, dict]:
    """n rows of `task` the model gets right (generated 2n, filtered by rank, the first n kept)."""
    ps = make_dataset(model, task, n=2 * n, seed=seed, **options)
    kept, report = ps.filter(model, by="rank")
    if len(kept) < n:
        raise RuntimeError(f"only {len(kept)} of {len(ps)} {task} rows are right; need {n}")
    return kept[list(range(n))], {"generated": len(ps), "accuracy": round(report.accuracy_before, 3), "n": n}


def task_line(name: str, info: dict) -> str:
    return f"{name}: {info['n']} rows kept of {info['generated']} generated (accuracy {info['accuracy']:.0%})"


def activation_patching(model, ps) -> dict:
    """Workflow 1: resid_pre at IO, S1, S2, END per layer; where the information sits and when it moves."""
    result = patch(model, ps, what="resid_pre", positions=IOI_POSITIONS, progress=False)
    normalised = torch.tensor(result.normalised)  # [layer, pos]
    best = [IOI_POSITIONS[p] for p in result.best_positions()]
    s2, end = IOI_POSITIONS.index("S2"), IOI_POSITIONS.index("END")
    last_s2 = max(l for l, b in enumerate(best) if b == "S2")
    first_end = min(l for l, b in enumerate(best) if b == "END")

    def cell(layer, pos):
        return result.spread.cell((layer, pos), float(normalised[layer, pos]))
    last = model.cfg.n_layers - 1
    at = {layer: {"S2": cell(layer, s2), "END": cell(layer, end)} for layer in sorted({0, last_s2, first_end, last})}
    others = normalised[:, [IOI_POSITIONS.index(p) for p in ("IO", "S1")]].abs().max().item()  # the same tokens
    line = (f"S2 restores most through L{last_s2} ({pct(at[last_s2]['S2'])}), END from L{first_end} "
            f"({pct(at[first_end]['END'])}); at L{first_end} S2 is down to {100 * at[first_end]['S2'].mean:.0f}%; "
            f"END at L{last} restores {pct(at[last]['END'])}")
    return {"line": line, "best_position_per_layer": best, "last_s2_layer": last_s2, "first_end_layer": first_end,
            "cells": {f"L{l}": {p: s.model_dump(exclude={"values"}) for p, s in v.items()} for l, v in at.items()},
            "io_s1_max": others, "clean": result.clean_value, "corrupted": result.corrupted_value}


def head_patching(model, ps, top: int = 3):
    """Workflow 2: head patching's top heads, and DLA by head."""
    heads = patch(model, ps, what="heads", progress=False)
    dla = direct_logit_attribution(model, ps, by="head", top_k=top)
    patched = [(h.label, h.normalised, h.spread) for h in heads.top[:top]]
    attributed = [(label, value, s) for (label, value), s in zip(dla.contributions, dla.spreads, strict=True)]
    labels = [label for label, _, _ in patched]
    one_by_one = ablate(model, ps, components=labels, progress=False)
    together = ablate(model, ps, components=labels, together=True, progress=False)
    ablated = [(label, one_by_one.spread.cell((i,), float(one_by_one.effects[i]))) for i, label in enumerate(labels)]
    ablated.append(("together", together.top[0].spread))
    line = ("head patching: " + "; ".join(f"{label} restores {pct(s, v)}" for label, v, s in patched)
            + ". DLA by head: " + "; ".join(f"{label} {num(s)}" for label, _, s in attributed)
            + f" of a total logit difference {num(dla.total_spread)}. Zero ablation on the clean prompts "
            f"(unablated {one_by_one.baseline:.2f}) moves it by: "
            + "; ".join(f"{label} {num(s)}" for label, s in ablated))
    return {"line": line, "patching": [(label, v, s.model_dump(exclude={"values"})) for label, v, s in patched],
            "dla": [(label, v, s.model_dump(exclude={"values"})) for label, v, s in attributed],
            "dla_total": dla.total_spread.model_dump(exclude={"values"}), "unablated": one_by_one.baseline,
            "zero_ablation": [(label, s.model_dump()) for label, s in ablated]}, heads


@torch.no_grad()
def induction(model, n: int = N, top: int = 4, seq_len: int = 40) -> dict:
    """Workflow 3: induction scores over an induction set; the loss over the repeat with the top heads
    zero-ablated, per sequence, against heads of the same layers that score lowest."""
    ps = make_dataset(model, "induction", n=n, seed=SEED)
    scores = detect_heads(model, "induction", prompt=ps)
    grid, std = torch.tensor(scores.scores), torch.tensor(scores.spread.std)
    order = grid.flatten().argsort(descending=True)[:top].tolist()
    heads = [divmod(i, model.cfg.n_heads) for i in order]
    layers = sorted({layer for layer, _ in heads})
    lowest = [(layer, int(grid[layer].argsort()[k])) for k in range(2) for layer in layers][:top]
    tokens, bos = repeated_tokens(model, seq_len=seq_len, batch=n, seed=SEED)

    def repeat_loss(components) -> torch.Tensor:  # [n] mean next-token loss predicting inside the second copy
        hooks = ablation_hooks(model, [f"L{l}H{h}" for l, h in components], tokens) if components else []
        per_token = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
        return per_token[:, bos + seq_len:].double().cpu()

    base = repeat_loss([])
    first_copy = model(tokens, return_type="loss", loss_per_token=True)[:, bos:bos + seq_len - 1].double().cpu()
    ablated, control = repeat_loss(heads), repeat_loss(lowest)
    rise, control_rise = spread((ablated - base).mean(1)), spread((control - base).mean(1))
    labels = [f"L{l}H{h}" for l, h in heads]
    line = (f"induction scores over {n} sequences: " + ", ".join(
        f"{label} {grid[l, h]:.2f} ± {std[l, h]:.2f}" for label, (l, h) in zip(labels, heads, strict=True))
        + f" (std over rows; median head {grid.median():.3f}); loss on the repeat {base.mean():.2f} nats "
        f"(first copy {first_copy.mean():.2f}); zeroing those {top}: {num(rise)} nats, "
        f"{rise.mean / (first_copy.mean() - base.mean()):.0%} of the way back to the first copy; zeroing "
        f"{'/'.join(f'L{l}H{h}' for l, h in lowest)} (lowest scores, same layers): {num(control_rise)} nats "
        f"({n} sequences of {seq_len} random tokens, repeated)")
    return {"line": line, "top": [(label, float(grid[l, h]), float(std[l, h])) for label, (l, h)
                                  in zip(labels, heads, strict=True)],
            "median": float(grid.median()), "loss_repeat": float(base.mean()), "loss_first": float(first_copy.mean()),
            "ablated_rise": rise.model_dump(), "control": [f"L{l}H{h}" for l, h in lowest],
            "control_rise": control_rise.model_dump()}


def logit_lens_claim(model, ps) -> dict:
    """Workflow 4: on how many rows the answer is the top token after each layer, and p(answer)."""
    result = logit_lens(model, ps)
    first = result.first_top_layer
    index = next(i for i, layer in enumerate(result.layers) if layer.label == first)
    shown = [result.layers[i] for i in sorted({max(index - 3, 0), max(index - 1, 0), index, len(result.layers) - 1})]
    line = (f"the answer is the top token on most rows from {first}: " + ", ".join(
        f"{layer.label} top on {layer.answer_top}/{result.n_rows}, p {layer.answer_prob.mean:.2f} ± "
        f"{half(layer.answer_prob):.2f}" for layer in shown))
    earliest = next((layer.label for layer in result.layers if layer.answer_top), None)
    line += f"; the first layer where any row has it on top: {earliest}"
    return {"line": line, "first_top_layer": first, "earliest_any": earliest,
            "answer_top": {layer.label: layer.answer_top for layer in result.layers},
            "answer_prob": {layer.label: round(layer.answer_prob.mean, 4) for layer in result.layers}}


def tracing(model, n: int, samples: int) -> dict:
    """Causal tracing (Meng et al. 2022): noise on the subject, the clean residual restored per layer at the
    subject's last token and at END; where each peaks."""
    ps, info = filtered(model, "factual", n=n, corruption="noise")
    result = causal_trace(model, ps, "resid", positions=["subject", "END"], samples=samples, progress=False)
    normalised = torch.tensor(result.normalised)  # [layer, pos]
    out = {"info": info, "samples": samples, "clean": result.clean_value, "noised": result.corrupted_value}
    parts = []
    for p, name in enumerate(["subject", "END"]):
        layer = int(normalised[:, p].argmax())
        s = result.spread.cell((layer, p), float(normalised[layer, p]))
        out[name] = {"peak_layer": layer, "peak": s.model_dump(), "by_layer": normalised[:, p].tolist()}
        parts.append(f"{name} peaks at L{layer} ({pct(s)})")
    best = [["subject", "END"][p] for p in result.best_positions()]
    hand = min(l for l, b in enumerate(best) if b == "END")
    out["first_end_layer"] = hand
    subject, end = normalised[:, 0], normalised[:, 1]
    out["line"] = (f"causal tracing ({n} capitals, noise 3× on the subject, {samples} samples; p(answer) clean "
                   f"{result.clean_value:.2f}, noised {result.corrupted_value:.2f}): " + "; ".join(parts)
                   + f"; END first restores more than the subject at L{hand}: after L{hand - 1} END {end[hand - 1]:.0%}, "
                   f"subject {subject[hand - 1]:.0%}; after L{hand} END {end[hand]:.0%}, subject {subject[hand]:.0%}")
    return out


def steering(model, coefficients=(-3.0, 3.0, 6.0), layer: int = 8) -> dict:
    """Workflow 5: shift of logit(' great') - logit(' terrible') over sentiment prompts per coefficient."""
    prompts = [t.format(noun) for t in SENTIMENT_TEMPLATES for noun in SENTIMENT_NOUNS]
    ps = PromptSet.from_lists(model, prompts, answer=" great", baseline=" terrible", corruption="noise",
                              source="sentiment templates")
    vector = steering_vector(model, POSITIVE, NEGATIVE, layer=layer)
    result = steer(model, ps, vector, layer=layer, coefficients=list(coefficients))
    line = (f"{len(ps)} prompts, vector from 4 contrast pairs at L{layer} (|v| {vector.norm():.1f}): "
            + "; ".join(f"×{c:+g} shifts logit(' great') - logit(' terrible') by {num(s)}"
                        for (_, c), s in zip(result.settings, result.shifts, strict=True)))
    return {"line": line, "n": len(ps), "layer": layer, "vector_norm": float(vector.norm()),
            "shifts": {c: s.model_dump() for (_, c), s in zip(result.settings, result.shifts, strict=True)}}


def circuit(model, ps, heads, target: float = 0.8, top_k: int = 10) -> dict:
    """Workflow 7: the EAP-IG circuit on the IOI set, and its heads against head patching's top_k."""
    found = find_circuit(model, ps, metric=row_metric(ps, "logit_diff"), method="eap-ig", faithfulness=target)
    f = found.faithfulness
    circuit_heads = [n for n in found.circuit.nodes if HEAD.match(n)]
    patched = [h.label for h in heads.top[:top_k]]
    order = heads.effects.flatten().abs().argsort(descending=True).tolist()  # flat [layer * n_heads + head]
    rank = {f"L{i // model.cfg.n_heads}H{i % model.cfg.n_heads}": r + 1 for r, i in enumerate(order)}
    both = [h for h in patched if h in circuit_heads]
    only_circuit = [(h, rank[h]) for h in circuit_heads if h not in patched]
    curve = [(e, round(v, 3), round(s, 3)) for e, v, s in found.curve.points()]
    line = (f"EAP-IG circuit on {f.n_prompts} IOI prompts: {found.circuit.n_edges} edges, "
            f"{len(found.circuit.nodes)} nodes ({len(circuit_heads)} heads), faithfulness {f.value:.2f} ± "
            f"{f.std:.2f} (bootstrap std; 95% CI {f.low:.2f}..{f.high:.2f}); curve "
            + ", ".join(f"{e}: {v:.2f}" for e, v, _ in curve)
            + f". Of head patching's top {top_k} ({', '.join(patched)}), {len(both)} are in the circuit")
    if only_circuit:
        ranks = sorted(r for _, r in only_circuit)
        worst = sorted(only_circuit, key=lambda hr: -hr[1])[:3]
        line += (f"; its {len(only_circuit)} other heads rank #{ranks[0]}..#{ranks[-1]} by head patching (median "
                 f"#{ranks[len(ranks) // 2]}; lowest {', '.join(f'{h} #{r}' for h, r in worst)})")
    return {"line": line, "n_edges": found.circuit.n_edges, "n_nodes": len(found.circuit.nodes),
            "heads": circuit_heads, "faithfulness": f.to_dict(), "curve": curve, "patching_top": patched,
            "overlap": both, "circuit_only": only_circuit, "selection": found.circuit.meta.get("selection")}


SECTIONS = ("patching", "heads", "induction", "lens", "tracing", "steering", "circuit")


def run(quick: bool = False, only: tuple[str, ...] = SECTIONS) -> dict:
    model = HookedTransformer.from_pretrained("smollm2-135m", device="cpu")
    out, started = {}, time.perf_counter()

    def section(name, fn, *args):
        t = time.perf_counter()
        value = fn(*args)
        result = value[0] if isinstance(value, tuple) else value
        result["seconds"] = round(time.perf_counter() - t, 1)
        out[name] = result
        print(f"[{name}] {result['line']}  ({result['seconds']} s)", flush=True)
        return value

    if {"patching", "heads", "circuit"} & set(only):
        ioi, info = filtered(model, "ioi")
        out["ioi_set"] = info
        print(task_line("IOI set", info), flush=True)
    if "patching" in only:
        section("1 activation patching", activation_patching, model, ioi)
    if "heads" in only:
        _, heads = section("2 IOI heads", head_patching, model, ioi)
    elif "circuit" in only:
        heads = patch(model, ioi, what="heads", progress=False)
    if "induction" in only:
        section("3 induction", induction, model)
    if "lens" in only:
        factual, info = filtered(model, "factual", n=30)
        out["factual_set"] = info
        print(task_line("factual set", info), flush=True)
        section("4 logit lens", logit_lens_claim, model, factual)
    if "tracing" in only:
        section("4b causal tracing", tracing, model, 10 if quick else 30, 3 if quick else 5)
    if "steering" in only:
        section("5 steering", steering, model)
    if "circuit" in only:
        section("7 circuit", circuit, model, ioi, heads)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def report(out: dict) -> str:
    return "\n".join([f"workflow claims on smollm2-135m (seed {SEED}; ± is the 95% CI half-width unless stated)"]
                     + [f"  {name}: {value['line']}" for name, value in out.items()
                        if isinstance(value, dict) and "line" in value])


def main(quick: bool = False, only: tuple[str, ...] = SECTIONS) -> dict:
    out = run(quick, only)
    print("\n" + report(out))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench.claims")
    parser.add_argument("--quick", action="store_true", help="a smaller causal-tracing run")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="run these sections only")
    args = parser.parse_args()
    results = main(args.quick, tuple(args.only))
    name = "claims.json" if set(args.only) == set(SECTIONS) else "claims-partial.json"
    path = Path(__file__).parent / "results" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"(written to {path})")
