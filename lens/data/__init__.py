"""Prompt sets: claims over many prompts, with mean, spread and sign agreement.

    from lens.data import PromptSet, make_dataset
    from lens.patching import patch
    ps = make_dataset(model, "ioi", n=50, seed=0)          # or PromptSet.from_lists / from_file
    ps, report = ps.filter(model)                          # the rows the model gets right; accuracy before/after
    result = patch(model, ps, what="heads")                # every row in one batched sweep
    print(result.summary())                                # "L9H6 ... restores 52% ± 6% ..., positive on 48/50"

The pieces:
- PromptSet (prompt_set.py): rows of clean prompt, corrupted prompt (or corruption="noise"), answer and
  baseline (single tokens), each checked on load; failing rows are dropped and counted in `ps.dropped`.
  Right-padded batches (`clean_tokens`, `corrupted_tokens`, `attention_mask`, `answer_ids`,
  `baseline_ids`) and per-row named positions (`positions["S2"]` [n_rows] indices, `spans[...]`
  [n_rows, 2]; "END" is every row's last token).
- make_dataset (generators.py): seeded IOI, factual recall, induction, greater-than and subject-verb
  agreement sets, valid for the model's tokenizer, each citing its source.
- row_metric (metrics.py): the metric of each row at its own position ("logit_diff", "logit", "prob",
  "logprob"); what the analyses use over a set. kl_divergence (KL(clean ‖ run) at each row's position) and
  span_loss (mean next-token loss over a span of each row) read the whole distribution.
- causal_trace (tracing.py): Meng et al.'s causal tracing, noise on the subject's embeddings, clean states
  restored per layer × position (residual, or windows of attention / MLP outputs).
- set_logit_lens / set_attention (reading.py): the logit lens at each row's END (answer probability,
  top-1 count, logit difference per layer), what chosen heads attend to from END by named position, and
  head scores (previous-token, induction, duplicate-token) per row.
- Spread / GridSpread (stats.py): mean, standard deviation, 95% interval of the mean, sign agreement,
  per-row values on request.

The analyses take a set where they take a prompt: patch, attribution_patch, path_patch, ablate (lens.patching),
direct_logit_attribution, logit_lens, attention_patterns, detect_heads, steer (lens.analysis), and
causal_trace here. The rows run as one more batch axis through the same engines,
and the result holds the mean over rows (`scores`), the spread per cell (`spread`), each hotspot's
Spread, and with per_row=True every row's values (`row_scores`). Normalised patching over a set is the
ratio of means; see lens.patching.result.set_figures for why.
"""

from lens.data.generators import SOURCES, make_dataset
from lens.data.metrics import RowMetric, SpanMetric, kl_divergence, row_metric, span_loss
from lens.data.prompt_set import FilterReport, PromptSet, Row
from lens.data.reading import SetAttention, SetLogitLens, set_attention, set_head_scores, set_logit_lens
from lens.data.stats import GridSpread, Spread, grid_spread, spread
from lens.data.tracing import causal_trace

__all__ = ["PromptSet", "Row", "FilterReport", "make_dataset", "SOURCES", "Spread", "GridSpread", "spread",
           "grid_spread", "RowMetric", "row_metric", "SpanMetric", "kl_divergence", "span_loss", "causal_trace", "set_logit_lens", "SetLogitLens", "set_attention",
           "SetAttention", "set_head_scores"]
