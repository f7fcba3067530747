"""Causal tracing with noise (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

The corrupted run is the clean prompt with seeded Gaussian noise added to the embeddings (hook_embed) of
chosen positions, by default the subject span; its scale is `noise` × the standard deviation of the
embeddings of the set's real tokens (3 as in the paper, which takes the std over its subjects' embeddings).
Each patch restores the clean state at one layer × position: the residual stream (`what="resid"`, the
layer's output resid_post, the paper's hidden state h_i^(l)), or a window of `window` layers of attention or
MLP outputs centred on the layer (`what="attn"` / `"mlp"`, layers l - window//2 .. l + window - window//2 - 1,
clipped to the model). The metric (default the answer's probability, the paper's) is averaged over
`samples` noise draws per row; the figures are then the mean over rows with its spread (over noise samples
instead when the set has one row).

Every noise sample of every row is one more row of the batch through lens/patching/engine.py, the noise a
shared edit on hook_embed: rows × samples × patches run as batched copies, not one forward each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from lens.data.metrics import MetricKind, row_metric
from lens.hooks import act_name
from lens.patching.activation import set_positions
from lens.patching.engine import Edit, run_patches
from lens.patching.result import PatchResult, patch_result
from lens.patching.slots import RESID, slot, write_slot

TraceWhat = Literal["resid", "attn", "mlp"]
HOOK = {"resid": "resid_post", "attn": "attn_out", "mlp": "mlp_out"}


@torch.no_grad()
def embedding_std(model, ps) -> float:
    """The standard deviation of hook_embed over the set's real tokens (every row's, padding left out)."""
    _, cache = model.run_with_cache(ps.clean_tokens.to(model.device), names_filter="hook_embed", stop_at_layer=0)
    embed = cache["hook_embed"][ps.attention_mask.bool().to(model.device)]  # [n_real_tokens, d_model]
    return float(embed.float().std())


def trace_noise(model, ps, span: str | None = None, noise: float = 3.0, samples: int = 10,
                seed: int = 0) -> torch.Tensor:
    """[samples * n_rows, pos, d_model] the noise each (sample, row) adds to its embeddings, sample-major
    (row s * n_rows + i is sample s of row i): N(0, (noise × embedding_std)²) on the span, 0 elsewhere."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, not {samples}")
    mask = ps.span_mask(span or ps.noise_span).repeat(samples, 1)  # [samples * n_rows, pos]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(samples * len(ps), ps.n_pos, model.cfg.d_model, generator=generator)
    scale = noise * embedding_std(model, ps)
    return (draws * scale * mask[..., None]).to(model.device, model.dtype)


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """The layers a window of `window` centred on `layer` covers, clipped to 0..n_layers-1."""
    start = layer - window // 2
    return [l for l in range(start, start + window) if 0 <= l < n_layers]


@torch.no_grad()
def causal_trace(model, ps, what: TraceWhat = "resid", positions: Sequence | None = None,
                 layers: Sequence[int] | None = None, *, window: int = 10, noise: float = 3.0, samples: int = 10,
                 span: str | None = None, seed: int = 0, metric: MetricKind = "prob", top_k: int = 10,
                 per_row: bool = False, batch_size: int | None = None, progress: bool = True) -> PatchResult:
    """Causal tracing of a prompt set (see the module docstring): for each layer (or `layers`) × position
    (names or indices as for patch; None = every index when the rows have one length, else every name),
    the metric with the clean state restored there, in runs whose `span` (default the set's noise_span,
    "subject") embeddings carry noise. Any set works: its clean prompts are traced, its corrupted ones unused.
    Returns a PatchResult: scores (mean over rows of the mean over samples), normalised (0 = noised,
    1 = clean), the spread, hotspots; per_row keeps each row's sample-averaged scores."""
    from lens.analysis.common import all_in_range
    if what not in HOOK:
        raise ValueError(f"what must be 'resid', 'attn' or 'mlp', not {what!r}")
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    n_rows, n_layers = len(ps), model.cfg.n_layers
    layers = all_in_range(layers, n_layers, "layer", f"a model of {n_layers} layers")
    named = set_positions(ps, positions)
    masks = [ps.position_mask(p).repeat(samples, 1) for p in named]  # each [samples * n_rows, pos]
    replicated = ps[[i for _ in range(samples) for i in range(n_rows)]]
    rows_metric = row_metric(replicated, metric)
    tokens = replicated.clean_tokens.to(model.device)
    added = trace_noise(model, ps, span, noise, samples, seed)
    noise_edit = Edit("hook_embed", lambda embed: embed + added)

    hook_layers = {layer: [layer] if what == "resid" else window_layers(layer, window, n_layers) for layer in layers}
    hooks = sorted({act_name(HOOK[what], l) for ls in hook_layers.values() for l in ls})
    clean_logits, clean_cache = model.run_with_cache(ps.clean_tokens.to(model.device), names_filter=hooks)
    clean_rows = row_metric(ps, metric).rows(clean_logits).double().cpu()
    patches = [[Edit(act_name(HOOK[what], l), write_slot(clean_cache[act_name(HOOK[what], l)].repeat(samples, 1, 1),
                                                         slot(RESID, {"pos": mask})))
                for l in hook_layers[layer]] for layer in layers for mask in masks]
    sweep = run_patches(model, tokens, rows_metric, patches, shared=[noise_edit], batch_size=batch_size,
                        progress=progress, desc=f"causal tracing ({what})")
    by_sample = sweep.values.view(len(patches), samples, n_rows)  # [n_patches, samples, n_rows]
    base = sweep.base_rows.view(samples, n_rows)
    if n_rows == 1:  # the units of the spread: noise samples of the one row
        units, corrupted_units, clean_units = by_sample[:, :, 0].T, base[:, 0], clean_rows.repeat(samples)
    else:
        units, corrupted_units, clean_units = by_sample.mean(1).T, base.mean(0), clean_rows
    scores = units.reshape(len(units), len(layers), len(named))  # [units, layer, pos]
    label = "" if what == "resid" else f" (windows of {window} layers)"
    first = ps.rows[0].clean + (f" (+{n_rows - 1} more)" if n_rows > 1 else "")
    corrupted = f"noise ×{noise:g} std on {span or ps.noise_span!r}, {samples} samples"
    labels = [p if isinstance(p, str) else model.to_str_tokens(ps.clean_tokens[0])[p] if model.tokenizer else str(p)
              for p in named]
    return patch_result(f"causal tracing{label}", HOOK[what], rows_metric.name, first, corrupted, scores, clean_units,
                        corrupted_units, ["layer", "pos"], [layers, list(range(len(named)))], labels, top_k,
                        per_row=per_row)
