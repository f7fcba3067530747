"""A prompt set: rows of clean prompt, corrupted prompt (or a corruption kind), answer and baseline, with
named positions resolved per row, checked on load and held as padded batches.

    ps = PromptSet.from_lists(model, clean=[...], corrupted=[...], answer=[" Mary", ...], baseline=[" John", ...])
    ps = PromptSet.from_file(model, "ioi.jsonl")       # one JSON object (or CSV row) per row, same fields
    ps = lens.data.make_dataset(model, "ioi", n=50, seed=0)
    ps, report = ps.filter(model)                      # rows the model gets right, accuracy before/after

Every row is checked when the set is built, and a row that fails is dropped with its reason counted in
`ps.dropped` ({reason: count}), never silently: the answer and the baseline must each be one token, the
clean and corrupted prompts must have the same token count and differ, named positions must lie inside
the prompt. A set where no row survives is an error that lists the reasons.

Batches (right-padded; rows of different lengths share one batch):
- `clean_tokens`, `corrupted_tokens` [n_rows, pos]; `attention_mask` [n_rows, pos] (1 = real token);
  `lengths` [n_rows]; `answer_ids`, `baseline_ids` [n_rows] (baseline_ids None when no row has one).
- `positions[name]` [n_rows]: the index of the named token in each row (a span's last token); every set
  has "END", each row's last token. `spans[name]` [n_rows, 2]: (start, stop) token spans, e.g. a recall
  prompt's "subject". Generators name their positions (IOI: IO, S1, S2, END).
Padding sits on the right, where causal attention keeps it from changing any real token: a row's
activations and logits in the batch are those of the row alone (up to float rounding), so the analyses
run the batch without an attention mask and read each row at its own positions.

corruption="noise" (causal tracing, Meng et al. 2022): no corrupted prompt; the corrupted run adds
Gaussian noise to the embeddings of the `noise_span` (default "subject") instead (lens/data/tracing.py).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel

from lens import tokens as tok
from lens.errors import TokenizationError

Corruption = Literal["prompt", "noise"]
Span = tuple[int, int]  # token indices [start, stop)
PositionSpec = int | Span | str  # a token index (negative: from the end), a span, or a substring of the clean text


@dataclass(frozen=True)
class Row:
    clean: str  # the prompt as text (decoded when given as ids)
    corrupted: str | None
    answer: str
    baseline: str | None
    clean_ids: tuple[int, ...]
    corrupted_ids: tuple[int, ...] | None
    answer_id: int
    baseline_id: int | None
    spans: dict[str, Span] = field(default_factory=dict)  # name → token span, "END" included


class FilterReport(BaseModel):
    by: str
    n_before: int
    n_after: int
    accuracy_before: float  # fraction of rows whose answer the model ranks first
    accuracy_after: float
    mean_metric_before: float | None  # mean logit(answer) - logit(baseline) at END, when rows have baselines
    mean_metric_after: float | None

    def summary(self) -> str:
        metric = "" if self.mean_metric_before is None else \
            f"; mean logit diff {self.mean_metric_before:+.3f} → {self.mean_metric_after:+.3f}"
        return (f"filter by {self.by}: kept {self.n_after}/{self.n_before} rows; accuracy (answer ranked first) "
                f"{self.accuracy_before:.0%} → {self.accuracy_after:.0%}{metric}")


class PromptSet:
    """Rows of clean / corrupted / answer / baseline with per-row named positions (see the module docstring).
    Build with from_lists, from_file or lens.data.make_dataset; a single prompt is the set of one."""

    def __init__(self, rows: Sequence[Row], dropped: dict[str, int] | None = None, corruption: Corruption = "prompt",
                 noise_span: str = "subject", task: str | None = None, pad_id: int = 0, source: str = ""):
        self.rows = list(rows)
        self.dropped = dict(dropped or {})
        self.corruption = corruption
        self.noise_span = noise_span
        self.task = task
        self.source = source  # where the rows come from (a generator's reference, a file)
        self.pad_id = pad_id
        if not self.rows:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.dropped.items()) or "no rows given"
            raise ValueError(f"no usable rows in the prompt set ({reasons})")
        names = [set(r.spans) for r in self.rows]
        self.position_names = [n for n in self.rows[0].spans if all(n in s for s in names)]
        self._build()

    # --- batches --------------------------------------------------------------------------------------------

    def _build(self) -> None:
        width = max(len(r.clean_ids) for r in self.rows)
        self.lengths = torch.tensor([len(r.clean_ids) for r in self.rows])  # [n_rows]
        self.attention_mask = (torch.arange(width)[None] < self.lengths[:, None]).long()  # [n_rows, pos]
        self.clean_tokens = self._pad([r.clean_ids for r in self.rows], width)  # [n_rows, pos]
        self.corrupted_tokens = None if self.corruption == "noise" else \
            self._pad([r.corrupted_ids for r in self.rows], width)
        self.answer_ids = torch.tensor([r.answer_id for r in self.rows])  # [n_rows]
        has_baseline = [r.baseline_id is not None for r in self.rows]
        if any(has_baseline) and not all(has_baseline):
            raise ValueError("some rows have a baseline and some do not; give one for every row or none")
        self.baseline_ids = torch.tensor([r.baseline_id for r in self.rows]) if all(has_baseline) else None
        self.spans = {name: torch.tensor([r.spans[name] for r in self.rows]) for name in self.position_names}
        self.positions = {name: span[:, 1] - 1 for name, span in self.spans.items()}  # [n_rows] last token

    def _pad(self, rows, width: int) -> torch.Tensor:
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, ids in enumerate(rows):
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> PromptSet:
        """A sub-set: an int, a slice or a list of row indices."""
        picked = [self.rows[index]] if isinstance(index, int) else \
            self.rows[index] if isinstance(index, slice) else [self.rows[int(i)] for i in index]
        return self._with_rows(picked, self.dropped)

    def _with_rows(self, rows, dropped) -> PromptSet:
        return PromptSet(rows, dropped, self.corruption, self.noise_span, self.task, self.pad_id, self.source)

    @property
    def same_length(self) -> bool:
        return bool((self.lengths == self.lengths[0]).all())

    @property
    def n_pos(self) -> int:
        return self.clean_tokens.shape[1]

    def span_mask(self, name: str) -> torch.Tensor:
        """[n_rows, pos] bool: the tokens of the named position (or span) in each row."""
        if name not in self.spans:
            raise ValueError(f"this set has no position {name!r}; it has {self.position_names}")
        span, index = self.spans[name], torch.arange(self.n_pos)[None]
        return (index >= span[:, :1]) & (index < span[:, 1:])

    def position_mask(self, position: int | str) -> torch.Tensor:
        """[n_rows, pos] bool for a name (its span in each row) or an absolute index (rows of one length only)."""
        if isinstance(position, str):
            return self.span_mask(position)
        if not self.same_length:
            raise ValueError(f"position {position} is an absolute index, but the rows have different lengths "
                             f"({int(self.lengths.min())}..{int(self.lengths.max())} tokens), so it is a different "
                             f"token in each row; use a named position: {self.position_names}")
        from lens.analysis.common import resolve_pos
        mask = torch.zeros(len(self), self.n_pos, dtype=torch.bool)
        mask[:, resolve_pos(position, self.n_pos)] = True
        return mask

    def summary(self) -> str:
        dropped = ", ".join(f"{k}: {v}" for k, v in self.dropped.items()) or "none"
        task = f"{self.task} " if self.task else ""
        return (f"{task}prompt set: {len(self)} rows, {int(self.lengths.min())}-{int(self.lengths.max())} tokens, "
                f"corruption {self.corruption}, positions {self.position_names}; dropped {dropped}")

    __repr__ = summary

    # --- building ---------------------------------------------------------------------------------------------

    @classmethod
    def from_lists(cls, model, clean: Sequence, corrupted: Sequence | str | None = None, answer=None, baseline=None,
                   positions: dict[str, Sequence[PositionSpec] | PositionSpec] | None = None,
                   corruption: Corruption = "prompt", noise_span: str = "subject", task: str | None = None,
                   source: str = "lists") -> PromptSet:
        """A set from per-row lists. clean: strings or token-id lists; corrupted: one per row (or None with
        corruption="noise"); answer / baseline: one token each (a string or an id), one per row or one for
        all; positions: name → one spec per row (or one for all): a token index, a (start, stop) span, or a
        substring of the clean prompt (its tokens, first occurrence)."""
        clean = [clean] if isinstance(clean, str) else list(clean)
        n = len(clean)

        def per_row(value, what):
            if value is None or isinstance(value, (str, int)):
                return [value] * n
            value = list(value)
            if len(value) != n:
                raise ValueError(f"{what} has {len(value)} entries for {n} clean prompts; give one per row or "
                                 f"one for all")
            return value
        if corruption not in ("prompt", "noise"):
            raise ValueError(f"corruption must be 'prompt' or 'noise', not {corruption!r}")
        if corruption == "prompt" and corrupted is None:
            raise ValueError("give corrupted prompts (one per row), or corruption='noise' for causal tracing")
        if answer is None:
            raise ValueError("give the answers (one token each): answer=[' Mary', ...] or one for all rows")
        corrupted = per_row(None if corruption == "noise" else corrupted, "corrupted")
        answers, baselines = per_row(answer, "answer"), per_row(baseline, "baseline")
        specs = {name: per_row(spec, f"positions[{name!r}]") if not isinstance(spec, tuple) else [spec] * n
                 for name, spec in (positions or {}).items()}
        rows, dropped = [], Counter()
        for i in range(n):
            row = check_row(model, clean[i], corrupted[i], answers[i], baselines[i],
                            {name: spec[i] for name, spec in specs.items()})
            if isinstance(row, str):
                dropped[row] += 1
            else:
                rows.append(row)
        pad = next(i for i in (model.cfg.pad_token_id, model.cfg.eos_token_id, 0) if i is not None)
        return cls(rows, dict(dropped), corruption, noise_span, task, pad, source)

    @classmethod
    def from_file(cls, model, path, **options) -> PromptSet:
        """A set from a JSONL file (one object a line) or a CSV file (a header row), with fields clean,
        corrupted, answer, baseline (optional) and, in JSONL, positions ({name: index, [start, stop] or
        substring}). Options as from_lists (corruption, noise_span, task)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no prompt-set file at {path}")
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                records = list(csv.DictReader(f))
        elif path.suffix in (".jsonl", ".json"):
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            raise ValueError(f"{path.name}: a prompt-set file is .jsonl (one JSON object a line) or .csv")
        if not records or "clean" not in records[0] or "answer" not in records[0]:
            raise ValueError(f"{path.name}: each row needs the fields 'clean' and 'answer' (and 'corrupted', "
                             f"'baseline', 'positions' as the set has them)")
        names = {name for r in records for name in (r.get("positions") or {})}
        positions = {name: [_as_spec((r.get("positions") or {}).get(name)) for r in records] for name in names}
        corrupted = [r.get("corrupted") or None for r in records]
        if all(c is None for c in corrupted):
            corrupted = None
        baseline = [r.get("baseline") or None for r in records]
        return cls.from_lists(model, [r["clean"] for r in records], corrupted, [r["answer"] for r in records],
                              None if all(b is None for b in baseline) else baseline, positions,
                              source=str(path), **options)

    # --- filtering --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def filter(self, model, by: Literal["rank", "metric"] = "rank") -> tuple[PromptSet, FilterReport]:
        """The rows the model gets right on the clean prompt: by="rank", the answer ranked first at END;
        by="metric", logit(answer) > logit(baseline) there. Returns the new set and the accuracy before and
        after (the dropped rows are counted under "model gets it wrong (<by>)")."""
        if by not in ("rank", "metric"):
            raise ValueError(f"by must be 'rank' or 'metric', not {by!r}")
        if by == "metric" and self.baseline_ids is None:
            raise ValueError("filter(by='metric') needs baselines (logit(answer) > logit(baseline)); use by='rank'")
        logits = end_logits(model, self)  # [n_rows, d_vocab]
        answer = logits.gather(1, self.answer_ids[:, None].to(logits.device))[:, 0]
        ranked_first = (logits > answer[:, None]).sum(1) == 0
        diff = None if self.baseline_ids is None else \
            answer - logits.gather(1, self.baseline_ids[:, None].to(logits.device))[:, 0]
        keep = ranked_first if by == "rank" else diff > 0
        kept = [row for row, k in zip(self.rows, keep.tolist(), strict=True) if k]
        dropped = dict(self.dropped)
        if len(kept) < len(self):
            dropped[f"model gets it wrong ({by})"] = len(self) - len(kept)
        report = FilterReport(
            by=by, n_before=len(self), n_after=len(kept), accuracy_before=ranked_first.double().mean().item(),
            accuracy_after=ranked_first[keep].double().mean().item() if len(kept) else 0.0,
            mean_metric_before=None if diff is None else diff.mean().item(),
            mean_metric_after=None if diff is None or not len(kept) else diff[keep].mean().item())
        if not kept:
            raise ValueError(f"the model gets no row right ({report.summary()}); check the answers' leading spaces")
        return self._with_rows(kept, dropped), report


def _as_spec(value):
    return tuple(value) if isinstance(value, list) else value


@torch.no_grad()
def end_logits(model, ps: PromptSet, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """[n_rows, d_vocab]: each row's logits at its END position (clean tokens by default)."""
    tokens = ps.clean_tokens if tokens is None else tokens
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    _, cache = model.run_with_cache(tokens.to(model.device), names_filter=final, return_type=None)
    resid = cache[final]  # [n_rows, pos, d_model]; only the END positions are unembedded
    end = ps.positions["END"].to(resid.device)
    return model.final_logits(resid[torch.arange(len(ps), device=resid.device), end][:, None])[:, 0].float()


def _ids(model, prompt) -> tuple[str, tuple[int, ...], list | None]:
    """(text, ids with BOS as the model prepends it, offsets of each id in the text or None)."""
    if isinstance(prompt, str):
        tokenizer = tok.require_tokenizer(model.tokenizer)
        encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
        if model.cfg.default_prepend_bos:
            ids, offsets = [model.cfg.bos_token_id] + ids, [(0, 0)] + offsets
        return prompt, tuple(ids), offsets
    ids = tuple(int(i) for i in torch.as_tensor(prompt).flatten().tolist())
    text = model.to_string(list(ids)) if model.tokenizer is not None else str(list(ids))
    return text, ids, None


def _token(model, token) -> tuple[str, int]:
    if isinstance(token, str):
        return token, model.to_single_token(token)
    token = int(token)
    if not 0 <= token < model.cfg.d_vocab:
        raise TokenizationError(f"token id {token} is outside the vocabulary")
    return (model.to_string([token]) if model.tokenizer is not None else f"<{token}>"), token


def _span(spec: PositionSpec, text: str, offsets, n: int) -> Span | str:
    """A position spec as a token span, or the reason it has none."""
    if isinstance(spec, str):
        if offsets is None:
            return "a substring position needs a text prompt"
        start = text.find(spec)
        if start < 0:
            return "named substring not in the prompt"
        stop = start + len(spec)
        hit = [i for i, (a, b) in enumerate(offsets) if a < stop and b > start and b > a]
        return (hit[0], hit[-1] + 1) if hit else "named substring not in the prompt"
    if isinstance(spec, tuple):
        start, stop = int(spec[0]), int(spec[1])
        return (start, stop) if 0 <= start < stop <= n else "position out of range"
    index = int(spec)
    index = index + n if index < 0 else index
    return (index, index + 1) if 0 <= index < n else "position out of range"


def check_row(model, clean, corrupted, answer, baseline, specs: dict[str, PositionSpec]) -> Row | str:
    """A checked row, or the reason it is dropped."""
    try:
        answer_text, answer_id = _token(model, answer)
    except TokenizationError:
        return "answer is not one token"
    baseline_text = baseline_id = None
    if baseline is not None:
        try:
            baseline_text, baseline_id = _token(model, baseline)
        except TokenizationError:
            return "baseline is not one token"
        if baseline_id == answer_id:
            return "answer and baseline are the same token"
    text, ids, offsets = _ids(model, clean)
    if not ids:
        return "empty prompt"
    if len(ids) > model.cfg.n_ctx:
        return "prompt longer than the context window"
    corrupted_text = corrupted_ids = None
    if corrupted is not None:
        corrupted_text, corrupted_ids, _ = _ids(model, corrupted)
        if len(corrupted_ids) != len(ids):
            return "clean and corrupted token counts differ"
        if corrupted_ids == ids:
            return "clean and corrupted prompts are identical"
    spans = {}
    for name, spec in specs.items():
        span = _span(spec, text, offsets, len(ids))
        if isinstance(span, str):
            return span
        spans[name] = span
    spans["END"] = (len(ids) - 1, len(ids))
    return Row(text, corrupted_text, answer_text, baseline_text, ids, corrupted_ids, answer_id, baseline_id, spans)
