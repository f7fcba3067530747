"""On the default model (smollm2-135m): every figure a prompt set aggregates equals the same figure from
single-prompt runs, row by row, within 1e-4, on IOI rows of different lengths (so the padding and the
per-row positions are exercised on a real tokenizer and real weights, not only on tiny random models)."""

import pytest
import torch
from conftest import max_diff

from lens.analysis import direct_logit_attribution, logit_lens
from lens.data import make_dataset
from lens.data.reading import set_logit_lens
from lens.patching import ablate, attribution_patch, logit_diff, patch, path_patch

TOL = 1e-4


@pytest.fixture(scope="module")
def ioi_rows(smollm2):
    """Three IOI rows of three different lengths."""
    ps = make_dataset(smollm2, "ioi", n=16, seed=0)
    picked, lengths = [], set()
    for i, n in enumerate(ps.lengths.tolist()):
        if n not in lengths:
            picked.append(i)
            lengths.add(n)
    assert len(picked) >= 3, f"the generator gave only lengths {sorted(lengths)}"
    return ps[picked[:3]]


def _single(model, ps, i):
    row = ps.rows[i]
    return row.clean, row.corrupted, logit_diff(model, row.answer, row.baseline)


def _at(ps, i, names):
    return [int(ps.positions[name][i]) for name in names]


@pytest.mark.real_model
def test_set_patching_attribution_path_patching_and_ablation_equal_single_prompt_runs(smollm2, ioi_rows):
    ps = ioi_rows
    assert len(set(ps.lengths.tolist())) == 3
    sweeps = [(patch, dict(what="heads", layers=[23, 29]), None),
              (patch, dict(what="resid_pre", layers=[0, 20, 24, 29]), ["S2", "END"]),
              (attribution_patch, dict(what="heads"), None),
              (path_patch, dict(receivers="L23H3.v", senders="mlps"), None)]
    for fn, options, positions in sweeps:
        quiet = {} if fn is attribution_patch else {"progress": False}
        over_set = fn(smollm2, ps, positions=positions, per_row=True, **options, **quiet)
        rows = torch.tensor(over_set.row_scores, dtype=torch.float64)
        worst = 0.0
        for i in range(len(ps)):
            at = None if positions is None else _at(ps, i, positions)
            single = fn(smollm2, *_single(smollm2, ps, i), positions=at, **options, **quiet)
            assert (rows[i] - single.tensor).abs().max() <= TOL, \
                f"{fn.__name__} {options} row {i}: {max_diff(rows[i], single.tensor)}"
            worst = max(worst, (rows[i] - single.tensor).abs().max().item())
        print(f"{fn.__name__} {options}: max |set - single| {worst:.2g}")
        assert (over_set.tensor - rows.mean(0)).abs().max() <= 1e-9
    components = ["L23H3", "L29H1", "L20H0"]
    over_set = ablate(smollm2, ps, components=components, per_row=True, progress=False)
    for i in range(len(ps)):
        clean, _, metric = _single(smollm2, ps, i)
        single = ablate(smollm2, clean, metric, components=components, progress=False)
        row = torch.tensor(over_set.row_scores[i], dtype=torch.float64)
        assert (row - single.tensor).abs().max() <= TOL, f"ablate row {i}: {max_diff(row, single.tensor)}"


@pytest.mark.real_model
def test_set_dla_and_logit_lens_equal_single_prompt_runs(smollm2, ioi_rows):
    ps = ioi_rows
    dla = direct_logit_attribution(smollm2, ps, by="head", per_row=True, top_k=1000)
    assert len(dla.contributions) == smollm2.cfg.n_layers * smollm2.cfg.n_heads
    for i, row in enumerate(ps.rows):
        single = direct_logit_attribution(smollm2, row.clean, row.answer, row.baseline, by="head", top_k=1000)
        values = dict(single.contributions)
        worst = max(abs(values[label] - dla.row_values[i][j]) for j, (label, _) in enumerate(dla.contributions))
        assert worst <= TOL, f"DLA row {i}: max |Δ| {worst:.3g}"
    totals = [direct_logit_attribution(smollm2, r.clean, r.answer, r.baseline, by="head").total for r in ps.rows]
    assert abs(dla.total - sum(totals) / len(totals)) <= TOL

    lens_set = set_logit_lens(smollm2, ps, per_row=True)
    assert logit_lens(smollm2, ps).model_dump() == set_logit_lens(smollm2, ps).model_dump()
    singles = [logit_lens(smollm2, r.clean, targets=[r.answer]) for r in ps.rows]
    for j, layer in enumerate(lens_set.layers):
        for i, single in enumerate(singles):
            assert abs(layer.answer_prob.values[i] - single.layers[j].targets[0].prob) <= TOL, (layer.label, i)
        assert layer.answer_top == sum(s.layers[j].targets[0].rank == 0 for s in singles), layer.label
