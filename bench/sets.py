"""Prompt sets on smollm2-135m: head patching of a 50-row IOI set through lens's batched engine against
(a) the naive loop, one run_with_hooks per row per patch (a sample of rows × patches timed and scaled),
(b) TransformerLens's generic_activation_patch (one forward of the whole padded batch per patch, through
its TransformerBridge on the same weights; one layer timed and scaled), and (c) the cost per row of the
set against a single-prompt sweep. Then steering: 5 coefficients × 20 tokens in one batched `steer`
against one plain 20-token generation. All timed in one process, so the machine's load hits both sides."""

from __future__ import annotations

import statistics
import time

import torch

from lens import act_name
from lens.analysis import steer
from lens.data import make_dataset, row_metric
from lens.patching import logit_diff, patch

N_ROWS = 50
NAIVE_ROWS, NAIVE_LAYERS = 3, 2  # the naive loop's timed sample: rows × layers × every head


def naive_heads(model, ps, rows, layers) -> tuple[torch.Tensor, float]:
    """[len(rows), len(layers), n_heads] scores from one run_with_hooks per row per patch, and the seconds."""
    started = time.perf_counter()
    out = torch.empty(len(rows), len(layers), model.cfg.n_heads)
    for r, i in enumerate(rows):
        n = int(ps.lengths[i])
        clean, corrupted = ps.clean_tokens[i:i + 1, :n], ps.corrupted_tokens[i:i + 1, :n]
        metric = logit_diff(model, int(ps.answer_ids[i]), int(ps.baseline_ids[i]))
        _, cache = model.run_with_cache(clean, names_filter=[act_name("z", l) for l in layers])
        for a, layer in enumerate(layers):
            name = act_name("z", layer)
            for head in range(model.cfg.n_heads):
                def write(z, point, head=head, name=name, cache=cache):
                    z = z.clone()
                    z[:, :, head] = cache[name][:, :, head]
                    return z
                out[r, a, head] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, write)]))
    return out, time.perf_counter() - started


def transformer_lens_layer(model, ps, layer: int) -> tuple[float, torch.Tensor] | str:
    """TransformerLens's generic_activation_patch over one layer's heads on the padded batch: (seconds per
    patch, its [n_heads] means), or why it did not run."""
    try:
        import pandas as pd
        from transformer_lens import patching as tl_patching
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return "not installed (pip install -e '.[compare]')"
    try:
        from bench.patching import transformer_lens_bridge
        bridge = transformer_lens_bridge(model, TransformerBridge)
        _, cache = bridge.run_with_cache(ps.clean_tokens)
        metric = row_metric(ps)  # reads each row at its own END: the right-padding never reaches it
        index = pd.DataFrame([(layer, h) for h in range(model.cfg.n_heads)], columns=["layer", "head"])
        started = time.perf_counter()
        values = tl_patching.generic_activation_patch(bridge, ps.corrupted_tokens, cache, metric,
                                                      tl_patching.layer_head_vector_patch_setter, "z", index_df=index)
        return (time.perf_counter() - started) / model.cfg.n_heads, values.cpu()
    except Exception as error:  # noqa: BLE001 - report any failure of the optional comparison, and go on
        return f"failed: {type(error).__name__}: {error}"[:200]


@torch.no_grad()
def run(quick: bool = False, repeats: int = 3) -> dict:
    from lens import HookedTransformer
    model = HookedTransformer.from_pretrained("smollm2-135m", device="cpu")
    ps = make_dataset(model, "ioi", n=N_ROWS, seed=0)
    row = ps.rows[0]
    single_metric = logit_diff(model, row.answer_id, row.baseline_id)

    def set_sweep():
        return patch(model, ps, what="heads", per_row=True, progress=False)

    def one_sweep():
        return patch(model, row.clean, row.corrupted, single_metric, what="heads", progress=False)
    result = set_sweep()  # warm-up, and the figures compared below
    set_times, one_times = [], []
    for _ in range(repeats):
        for times, fn in ((set_times, set_sweep), (one_times, one_sweep)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    set_s, one_s = statistics.median(set_times), statistics.median(one_times)
    print(f"  (lens set sweep {set_s:.2f}s, single-prompt sweep {one_s:.2f}s)", flush=True)
    layers = [model.cfg.n_layers // 2, model.cfg.n_layers - 1][:NAIVE_LAYERS]
    rows = list(range(NAIVE_ROWS))
    naive, naive_sample_s = naive_heads(model, ps, rows, layers)
    print(f"  (naive sample: {len(rows)} rows × {len(layers)} layers × all heads in {naive_sample_s:.2f}s)", flush=True)
    lens_rows = torch.tensor(result.row_scores)[rows][:, layers]  # [rows, layers, heads]
    n_patches = model.cfg.n_layers * model.cfg.n_heads
    naive_s = naive_sample_s / (len(rows) * len(layers) * model.cfg.n_heads) * N_ROWS * n_patches
    out = {"rows": len(ps), "tokens": f"{int(ps.lengths.min())}-{int(ps.lengths.max())}", "patches": n_patches,
           "lens_set_s": set_s, "lens_single_s": one_s, "per_row_vs_single": set_s / len(ps) / one_s,
           "naive_s_estimate": naive_s, "speedup_vs_naive": naive_s / set_s,
           "max_abs_diff_vs_naive": (lens_rows - naive).abs().max().item(),
           "top": result.top[0].label, "top_text": result.top[0].spread.text(percent=True)}
    if quick:
        out["transformer_lens"] = "skipped with --quick"
    else:
        layer = model.cfg.n_layers // 2
        tl = transformer_lens_layer(model, ps, layer)
        print(f"  (TransformerLens: {tl if isinstance(tl, str) else f'{tl[0]:.3f}s a patch'})", flush=True)
        if isinstance(tl, tuple):
            per_patch, values = tl
            estimate = per_patch * n_patches
            out["transformer_lens"] = {"s_per_patch": per_patch, "sweep_s_estimate": estimate,
                                       "speedup": estimate / set_s, "work_ratio": work_ratio(model, ps),
                                       "max_abs_diff_vs_lens": (values.double() - result.tensor[layer]).abs().max().item()}
        else:
            out["transformer_lens"] = tl
    out["steering"] = steering(model, repeats)
    return out


def work_ratio(model, ps) -> float:
    """TransformerLens's multiply-adds for the head sweep over lens's, counting only the weight matmuls: it runs
    every layer over the padded batch and unembeds every position, while lens runs a patch at layer L through
    layers L.. only, over each length's rows unpadded, and unembeds each row's END. The speedup any exact
    method can reach against it, at equal speed per multiply-add (lens's skipping of unchanged prefixes
    not counted)."""
    cfg = model.cfg
    w = model.weights  # stacked per layer: [n_layers, ...]
    per_token_layer = sum(getattr(w, n)[0].numel() for n in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")
                          if getattr(w, n, None) is not None)
    unembed = cfg.d_model * cfg.d_vocab
    n_rows, n_pos, layers = len(ps), ps.n_pos, cfg.n_layers
    tl = n_rows * n_pos * (layers * per_token_layer + unembed) * layers * cfg.n_heads
    lens_tokens = int(ps.lengths.sum())
    remaining = sum(layers - l for l in range(layers)) * cfg.n_heads  # layer-runs over all the patches
    return tl / (lens_tokens * per_token_layer * remaining + n_rows * unembed * layers * cfg.n_heads)


def steering(model, repeats: int = 3, new_tokens: int = 20) -> dict:
    """One batched steer of 5 coefficients × new_tokens against one plain greedy generation of new_tokens."""
    prompt = "I think that you are"
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    coefficients = [-4.0, -2.0, 0.0, 2.0, 4.0]

    def steered():
        return steer(model, prompt, vector, layer=6, coefficients=coefficients, max_new_tokens=new_tokens,
                     tokens=[" nice"])

    def plain(stop_at_eos=False):  # all new_tokens, as the steered rows run (a row at EOS waits for the rest)
        return model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, verbose=False,
                              stop_at_eos=stop_at_eos)
    from bench.timing import compare
    t = compare({"steer": steered, "plain": plain}, repeats=repeats + 2, warmup=1)
    zero = steered().generations[2].text
    return {"coefficients": len(coefficients), "new_tokens": new_tokens, "steer_s": t["steer"],
            "plain_s": t["plain"], "ratio": t["steer"] / t["plain"],
            "coefficient_0_is_plain": prompt + zero == plain(stop_at_eos=True)}


def report(r: dict) -> str:
    lines = [f"prompt sets: head patching of a {r['rows']}-row IOI set ({r['tokens']} tokens) on smollm2-135m, "
             f"{r['patches']} patches per row",
             f"  lens (all rows batched)   {r['lens_set_s']:7.2f}s",
             f"  naive loop (estimated)    {r['naive_s_estimate']:7.0f}s  = {r['speedup_vs_naive']:.0f}x lens "
             f"(target ≥ 20x; timed on {NAIVE_ROWS} rows × {NAIVE_LAYERS} layers, max|Δ| "
             f"{r['max_abs_diff_vs_naive']:.1e})"]
    tl = r["transformer_lens"]
    if isinstance(tl, dict):
        lines.append(f"  TransformerLens (bridge)  {tl['sweep_s_estimate']:7.0f}s  = {tl['speedup']:.0f}x lens "
                     f"(target ≥ 20x; one layer timed, max|Δ| {tl['max_abs_diff_vs_lens']:.1e}); its weight "
                     f"matmuls are {tl['work_ratio']:.1f}x lens's, the ceiling of exact patching at equal speed")
    else:
        lines.append(f"  TransformerLens: {tl}")
    lines.append(f"  cost per row of the set: {r['per_row_vs_single']:.2f}x a single-prompt sweep "
                 f"({r['lens_single_s']:.2f}s)")
    lines.append(f"  top head {r['top']}: restores {r['top_text']}")
    s = r["steering"]
    lines.append(f"steering: {s['coefficients']} coefficients × {s['new_tokens']} tokens in one steer call "
                 f"{s['steer_s']:.2f}s vs one plain generation {s['plain_s']:.2f}s = {s['ratio']:.2f}x (target ≤ 2x); "
                 f"coefficient 0 equals plain generation: {s['coefficient_0_is_plain']}")
    return "\n".join(lines)


def main(quick: bool = False) -> dict:
    rows = run(quick=quick)
    print("\n" + report(rows))
    return rows


if __name__ == "__main__":
    import sys
    main(quick="--quick" in sys.argv)
