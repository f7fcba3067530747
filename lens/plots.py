"""Plots of analysis results: PNG files written headless with matplotlib.

Each function takes a result object and an output path and returns the absolute path written.
Signed quantities (attributions, patching effects) use a diverging map centred on zero;
non-negative scores a sequential one. Figures have a fixed size (FIGSIZE * DPI pixels per cell
grid rules below) so that a file's size is predictable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display is needed or used
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100


def _save(fig, path) -> str:
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return str(path)


def _short(title: str, limit: int = 80) -> str:
    """Each line of a title cut to `limit` characters."""
    return "\n".join(line if len(line) <= limit else line[: limit - 1] + "…" for line in title.split("\n"))


def heatmap(values, row_labels: Sequence[str], col_labels: Sequence[str], title: str, colorbar: str, path,
            xlabel: str, ylabel: str, signed: bool = True, size: tuple[float, float] = (10, 7)) -> str:
    """A labelled heatmap; signed → red positive / blue negative centred on zero, else viridis from zero."""
    data = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    if signed:
        bound = max(float(np.abs(data).max()), 1e-9)
        image = ax.imshow(data, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    else:
        image = ax.imshow(data, cmap="viridis", vmin=0, vmax=max(float(data.max()), 1e-9), aspect="auto")
    step_r, step_c = max(1, len(row_labels) // 40), max(1, len(col_labels) // 40)
    ax.set_yticks(range(0, len(row_labels), step_r), list(row_labels)[::step_r], fontsize=8)
    ax.set_xticks(range(0, len(col_labels), step_c), list(col_labels)[::step_c], fontsize=8,
                  rotation=90 if max(map(len, col_labels), default=0) > 3 else 0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_short(title), fontsize=11)
    fig.colorbar(image, ax=ax, label=colorbar)
    return _save(fig, path)


def plot_head_scores(result, path) -> str:
    """Layer × head heatmap of a HeadScores result."""
    scores = np.asarray(result.scores)
    return heatmap(scores, [str(i) for i in range(scores.shape[0])], [str(h) for h in range(scores.shape[1])],
                   f"{result.kind.replace('_', '-')} score per head\non {result.on}", "score (mean attention, 0–1)",
                   path, xlabel="head", ylabel="layer", signed=False)


def plot_dla(result, path) -> str:
    """Direct logit attribution: a layer × head heatmap (by head) or bars (by layer / component / neuron)."""
    title = f"direct logit attribution to {result.metric}\non {result.prompt!r}"
    if result.head_grid is not None:
        grid = np.asarray(result.head_grid)
        return heatmap(grid, [str(i) for i in range(grid.shape[0])], [str(h) for h in range(grid.shape[1])], title,
                       "contribution (logits)", path, xlabel="head", ylabel="layer")
    labels, values = (result.layer_labels, result.layer_values) if result.layer_values else \
        map(list, zip(*result.contributions, strict=True))
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    colors = ["#b2182b" if v > 0 else "#2166ac" for v in values]
    ax.bar(range(len(values)), values, color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_ylabel("contribution (logits)")
    ax.set_xlabel(result.by)
    ax.set_title(_short(title), fontsize=11)
    return _save(fig, path)


def plot_logit_lens(result, path) -> str:
    """Per layer: each target's probability and rank, and the top token's probability."""
    labels = [r.label for r in result.layers]
    fig, (ax_p, ax_r) = plt.subplots(2, 1, figsize=(10, 7), layout="constrained", sharex=True)
    targets = [t.token for t in result.layers[0].targets]
    for i, token in enumerate(targets):
        ax_p.plot([r.targets[i].prob for r in result.layers], marker="o", label=repr(token))
        ax_r.plot([r.targets[i].rank for r in result.layers], marker="o", label=repr(token))
    ax_p.plot([r.top[0][1] for r in result.layers], color="grey", linestyle="--", label="top token (any)")
    ax_p.set_ylabel("probability")
    ax_p.set_ylim(0, 1.1)
    ax_p.legend(fontsize=8)
    ax_r.set_yscale("symlog", linthresh=1)  # log-like, and rank 0 (the top token, as the JSON counts) drawable
    ax_r.invert_yaxis()
    ax_r.set_ylabel("rank (0 = top)")
    ax_r.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax_r.set_xlabel("residual stream after layer")
    ax_p.set_title(_short(f"logit lens at {result.str_tokens[result.position]!r} of {result.prompt!r}"), fontsize=11)
    return _save(fig, path)


def plot_attention(result, path) -> str:
    """A grid of the chosen heads' patterns (query rows, key columns) with token labels."""
    n = len(result.heads)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 5 * rows), layout="constrained", squeeze=False)
    tokens = [repr(t)[1:-1][:12] for t in result.str_tokens]
    for ax, head in zip(list(axes.flat)[:n], result.heads, strict=True):
        image = ax.imshow(np.asarray(head.pattern), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"L{head.layer}H{head.head}", fontsize=10)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.6)
    fig.suptitle(_short(f"attention patterns on {result.prompt!r}"), fontsize=11)
    return _save(fig, path)


def plot_layer_position(values, str_tokens: Sequence[str], title: str, colorbar: str, path) -> str:
    """A layer × position heatmap of a signed quantity with token labels (e.g. patching effects)."""
    values = np.asarray(values)
    return heatmap(values, [str(i) for i in range(values.shape[0])], [repr(t)[1:-1][:12] for t in str_tokens],
                   title, colorbar, path, xlabel="position (token)", ylabel="layer")
