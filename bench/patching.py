"""The IOI patching sweeps on smollm2-135m: lens's batched engine vs the naive loop (one run_with_hooks
per patch, as TransformerLens's patching does) in the same process, attribution patching's time and its
correlation with exact patching, and TransformerLens itself where it is installed."""

from __future__ import annotations

import statistics
import time

import torch

from lens import HookedTransformer, act_name
from lens.patching import attribution_patch, logit_diff, patch

CLEAN = "When John and Mary went to the store, Mary gave a bottle to"
CORRUPTED = "When John and Mary went to the store, John gave a bottle to"  # the second-clause name swapped
SWEEPS = {"resid_pre": ("resid_pre", "pos"), "heads": ("z", "head")}  # what → (hook, swept axis)


def naive_sweep(model, clean, corrupted, metric, hook: str, axis: str, layers) -> torch.Tensor:
    """One forward per patch, the clean activation written into the corrupted run."""
    _, clean_cache = model.run_with_cache(clean, names_filter=[act_name(hook, layer) for layer in layers])
    size = corrupted.shape[1] if axis == "pos" else model.cfg.n_heads
    out = torch.empty(len(layers), size)
    for i, layer in enumerate(layers):
        name = act_name(hook, layer)
        for j in range(size):
            where = (slice(None), j) if axis == "pos" else (slice(None), slice(None), j)  # resid / z [.., pos, head]

            def write(activation, point, where=where, name=name):
                activation = activation.clone()
                activation[where] = clean_cache[name][where]
                return activation
            out[i, j] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, write)]))
    return out


def transformer_lens_bridge(model, TransformerBridge):
    """TransformerLens's TransformerBridge around the HF model built from the same GGUF as `model`, in
    compatibility mode without weight processing: the same weights, so the numbers must agree."""
    from bench.forward import default_model
    hf = default_model()[2]("eager")
    source = model.load_info["source"]
    bridge = TransformerBridge.boot_transformers(source.rsplit("/", 1)[0], hf_model=hf, tokenizer=model.tokenizer,
                                                 device="cpu")
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return bridge


def transformer_lens_sweeps(model, clean, corrupted, tl_metric, layer: int) -> dict | str:
    """TransformerLens 4's own patching on the same weights (its TransformerBridge around the HF model
    built from the same GGUF), at one layer: {what: (seconds per patch, its [patches] result)}, or why it
    did not run. One layer, because it runs one full forward per patch at every layer alike."""
    try:
        import pandas as pd
        from transformer_lens import patching as tl_patching
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return "not installed (pip install -e '.[compare]')"
    try:
        bridge = transformer_lens_bridge(model, TransformerBridge)
        _, cache = bridge.run_with_cache(clean)
        out = {}
        for what, setter, name, size in (("resid_pre", tl_patching.layer_pos_patch_setter, "resid_pre", clean.shape[1]),
                                         ("heads", tl_patching.layer_head_vector_patch_setter, "z", model.cfg.n_heads)):
            axis = "pos" if what == "resid_pre" else "head"
            index = pd.DataFrame([(layer, i) for i in range(size)], columns=["layer", axis])
            started = time.perf_counter()
            values = tl_patching.generic_activation_patch(bridge, corrupted, cache, tl_metric, setter, name,
                                                          index_df=index)
            out[what] = ((time.perf_counter() - started) / size, values.cpu())
        return out
    except Exception as error:  # noqa: BLE001 - report any failure of the optional comparison, and go on
        return f"failed: {type(error).__name__}: {error}"[:200]


@torch.no_grad()
def run(quick: bool = False, repeats: int = 3) -> dict:
    model = HookedTransformer.from_pretrained("smollm2-135m", device="cpu")
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    metric = logit_diff(model, " John", " Mary")
    john, mary = model.to_single_token(" John"), model.to_single_token(" Mary")

    def tl_metric(logits):  # the naive loop's metric: TransformerLens style, on the full logits
        return (logits[:, -1, john] - logits[:, -1, mary]).mean()
    layers = [0, 15] if quick else list(range(model.cfg.n_layers))
    repeats = min(repeats, len(layers))
    rows = {}
    for what, (hook, axis) in SWEEPS.items():
        def lens_sweep(what=what):
            return patch(model, clean, corrupted, metric, what, layers=layers, progress=False)

        def atp_sweep(what=what):
            return attribution_patch(model, clean, corrupted, metric, what, layers=layers)
        exact, estimate = lens_sweep(), atp_sweep()  # warm-up, and the results compared below
        # The naive loop runs in `repeats` stretches of layers with a lens and an attribution sweep before
        # each, so that a change in the machine's load hits both sides alike.
        lens_times, atp_times, naive_time, slow = [], [], 0.0, []
        for stretch in range(repeats):
            for times, fn in ((lens_times, lens_sweep), (atp_times, atp_sweep)):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            started = time.perf_counter()
            part = layers[stretch * len(layers) // repeats:(stretch + 1) * len(layers) // repeats]
            slow.append(naive_sweep(model, clean, corrupted, tl_metric, hook, axis, part))
            naive_time += time.perf_counter() - started
        slow = torch.cat(slow)
        x, y = exact.tensor.flatten(), estimate.tensor.flatten()
        rows[what] = {
            "patches": exact.tensor.numel(), "lens_s": statistics.median(lens_times), "naive_s": naive_time,
            "speedup": naive_time / statistics.median(lens_times),
            "max_abs_diff": (exact.tensor - slow.double()).abs().max().item(),
            "attribution_s": statistics.median(atp_times),
            "attribution_pearson": torch.corrcoef(torch.stack([x, y]))[0, 1].item(),
            "top": exact.top[0].label, "top_normalised": exact.top[0].normalised}
        rows[what]["exact"] = exact.tensor
    rows["layers"] = "all 30" if not quick else f"{layers} (quick)"
    rows["transformer_lens"] = "skipped with --quick"
    if not quick:
        layer = model.cfg.n_layers // 2
        tl = transformer_lens_sweeps(model, clean, corrupted, tl_metric, layer)
        if isinstance(tl, dict):
            tl = {what: {"s_per_patch": per_patch, "sweep_s_estimate": per_patch * rows[what]["patches"],
                         "max_abs_diff_vs_lens": (values.double() - rows[what]["exact"][layer]).abs().max().item()}
                  for what, (per_patch, values) in tl.items()}
        rows["transformer_lens"] = tl
    for what in SWEEPS:
        del rows[what]["exact"]
    return rows


def report(rows: dict) -> str:
    lines = [f"IOI patching sweeps (smollm2-135m, 14 tokens, layers {rows['layers']})",
             "sweep       patches    lens   naive  speedup  max|Δ|   attribution  pearson  top hotspot"]
    for what in SWEEPS:
        r = rows[what]
        lines.append(f"{what:10s} {r['patches']:8d} {r['lens_s']:6.2f}s {r['naive_s']:6.1f}s {r['speedup']:7.1f}x "
                     f"{r['max_abs_diff']:7.1e} {r['attribution_s']:9.2f}s {r['attribution_pearson']:8.3f}  "
                     f"{r['top']} ({r['top_normalised']:+.2f})")
    if "quick" in rows["layers"]:
        lines.append("(--quick sweeps 2 layers, where lens's two fixed forwards, clean and corrupted, dominate; "
                     "the full run sweeps all 30)")
    tl = rows["transformer_lens"]
    if isinstance(tl, dict):
        lines.append("TransformerLens 4 (bridge; timed on one layer, scaled to the sweep): " + ", ".join(
            f"{what} {t['sweep_s_estimate']:.0f}s = {t['sweep_s_estimate'] / rows[what]['lens_s']:.0f}x lens "
            f"(max|Δ| {t['max_abs_diff_vs_lens']:.1e})" for what, t in tl.items()))
    else:
        lines.append(f"TransformerLens: {tl}")
    return "\n".join(lines)


def main(quick: bool = False) -> dict:
    """Run (fewer layers with quick), print the report, return the figures (for bench/__main__.py)."""
    rows = run(quick=quick)
    print("\n" + report(rows))
    return rows


if __name__ == "__main__":
    import sys
    main(quick="--quick" in sys.argv)
