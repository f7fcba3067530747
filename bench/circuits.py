"""Circuit discovery on smollm2-135m over a 50-prompt IOI set, as ratios against the set's own forward and
forward + backward in the same process: EAP over every edge (target ≤ 3x one forward + backward), EAP-IG with
5 steps (≤ 8x), and a faithfulness curve of 10 sizes (≤ 12 forwards of the set); the memory of the scores.

    python -m bench.circuits [--n 50]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from lens import HookedTransformer
from lens.circuits import Graph, Pair, curve, edge_scores
from lens.data import make_dataset
from lens.data.metrics import row_metric


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n: int = 50, repeats: int = 3) -> dict:
    model = HookedTransformer.from_pretrained("smollm2-135m", device="cpu")
    ps = make_dataset(model, "ioi", n=n, seed=0)
    metric = row_metric(ps, "logit_diff")
    pair = Pair.of(model, ps)
    graph = Graph.of(model)

    def forward():
        with torch.no_grad():
            metric(model(pair.clean, attention_mask=pair.mask))

    def forward_backward():
        def leaf(x, point):
            keep["leaf"] = x.detach().requires_grad_(True)
            return keep["leaf"]
        keep = {}
        with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)]):
            value = metric(model(pair.clean, attention_mask=pair.mask))
            torch.autograd.grad(value, [keep["leaf"]])

    found = {}
    sizes = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
    timed = {"forward_s": forward, "forward_backward_s": forward_backward,
             "eap_s": lambda: found.update(eap=edge_scores(model, pair, metric, "eap")),
             "eap_ig_s": lambda: found.update(ig=edge_scores(model, pair, metric, "eap-ig", steps=5)),
             "curve_s": lambda: found.update(curve=curve(model, found["ig"], pair, metric, sizes))}
    rows = {"n_prompts": len(ps), "n_pos": pair.clean.shape[1], "n_edges": graph.n_edges, "unchanged": pair.unchanged()}
    rss_before = _rss_mib()
    # interleaved: each round times every step once, so a change in the machine's load hits all of them
    times = {name: [] for name in timed}
    for _ in range(repeats + 1):  # the first round warms up
        for name, fn in timed.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    rows |= {name: sorted(ts[1:])[len(ts[1:]) // 2] for name, ts in times.items()}
    rows["eap_ratio"] = rows["eap_s"] / rows["forward_backward_s"]
    rows["eap_ig_ratio"] = rows["eap_ig_s"] / rows["forward_backward_s"]
    rows["curve_forwards"] = rows["curve_s"] / rows["forward_s"]
    rows["scores_mib"] = found["ig"].scores.numel() * found["ig"].scores.element_size() / 2**20
    cfg = model.cfg
    rows["deltas_mib"] = graph.n_senders * len(ps) * pair.clean.shape[1] * cfg.d_model * 4 / 2**20
    rows["peak_rss_growth_mib"] = _rss_mib() - rss_before
    rows["curve"] = [[e, round(v, 4), round(s, 4)] for e, v, s in found["curve"].points()]
    return rows


def report(rows: dict) -> str:
    return "\n".join([
        f"circuit discovery, smollm2-135m, IOI: {rows['n_prompts']} prompts x {rows['n_pos']} tokens, "
        f"{rows['n_edges']} edges; clean and corrupted prompts agree on their first {rows['unchanged']} tokens",
        f"  one forward {rows['forward_s']:.2f} s, forward + backward {rows['forward_backward_s']:.2f} s",
        f"  EAP (every edge)          {rows['eap_s']:.2f} s = {rows['eap_ratio']:.2f}x forward+backward (target <= 3)",
        f"  EAP-IG (5 steps)          {rows['eap_ig_s']:.2f} s = {rows['eap_ig_ratio']:.2f}x forward+backward "
        f"(target <= 8)",
        f"  faithfulness curve (10)   {rows['curve_s']:.2f} s = {rows['curve_forwards']:.1f} forwards (target <= 12)",
        f"  scores {rows['scores_mib']:.2f} MiB (float64 [senders, receivers]); sender deltas held during a pass "
        f"{rows['deltas_mib']:.0f} MiB; peak RSS grew {rows['peak_rss_growth_mib']:.0f} MiB",
        "  curve (edges, faithfulness, std): " + ", ".join(f"{e}: {v:.2f}±{s:.2f}" for e, v, s in rows["curve"]),
    ])


def main(n: int = 50, quick: bool = False) -> dict:
    rows = run(n, repeats=1 if quick else 3)
    print("\n" + report(rows))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench.circuits")
    parser.add_argument("--n", type=int, default=50)
    main(parser.parse_args().n)
