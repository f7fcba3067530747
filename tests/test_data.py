"""Prompt sets: checks on load, padded batches with per-row positions, filter, the spread figures, the
generators on both real tokenizers, and set-level patching equal to single-prompt runs row by row."""

import json
import math

import pytest
import torch
from conftest import TINY_VARIANTS, max_diff

from lens import HookedTransformer, act_name
from lens.analysis import attention_patterns, detect_heads, direct_logit_attribution, logit_lens, steer
from lens.data import PromptSet, causal_trace, make_dataset, row_metric, spread
from lens.data.reading import set_head_scores
from lens.data.stats import t_975
from lens.data.tracing import trace_noise, window_layers
from lens.patching import ablate, attribution_patch, logit_diff, patch, path_patch

GEN = torch.Generator().manual_seed(0)
LENGTHS = [7, 5, 9, 6]
CLEAN = [torch.randint(0, 50, (n,), generator=GEN).tolist() for n in LENGTHS]
CORRUPTED = [c[:2] + [(c[2] + 7) % 50] + c[3:] for c in CLEAN]  # token 2 changed in every row
ANSWERS, BASELINES = [3, 4, 5, 6], [8, 9, 10, 11]
TASKS = ["ioi", "factual", "induction", "greater_than", "agreement"]


def tiny(name="llama_like"):
    return HookedTransformer.from_config(TINY_VARIANTS[name], seed=1)


def tiny_set(model):
    return PromptSet.from_lists(model, CLEAN, CORRUPTED, ANSWERS, BASELINES, positions={"X": 2})


def test_rows_that_fail_a_check_are_dropped_and_counted():
    model = tiny()
    clean = CLEAN + [CLEAN[0], CLEAN[1], CLEAN[2]]
    corrupted = CORRUPTED + [CLEAN[0], CORRUPTED[1][:-1], CORRUPTED[2]]  # identical; one token short; fine
    answers = ANSWERS + [3, 3, 99]  # 99 is outside the 50-token vocabulary
    ps = PromptSet.from_lists(model, clean, corrupted, answers, BASELINES + [8, 8, 8])
    assert len(ps) == 4
    assert ps.dropped == {"clean and corrupted prompts are identical": 1,
                          "clean and corrupted token counts differ": 1, "answer is not one token": 1}
    with pytest.raises(ValueError, match="no usable rows.*identical: 1"):
        PromptSet.from_lists(model, [CLEAN[0]], [CLEAN[0]], 3)


def test_batches_are_right_padded_with_per_row_positions():
    ps = tiny_set(tiny())
    assert ps.clean_tokens.shape == (4, 9) and ps.lengths.tolist() == LENGTHS
    assert ps.positions["END"].tolist() == [n - 1 for n in LENGTHS] and ps.positions["X"].tolist() == [2] * 4
    for i, n in enumerate(LENGTHS):
        assert ps.clean_tokens[i, :n].tolist() == CLEAN[i] and ps.attention_mask[i].sum() == n
    assert ps.span_mask("END").sum(1).tolist() == [1] * 4
    with pytest.raises(ValueError, match="different lengths.*named position"):
        ps.position_mask(3)


def test_a_padded_row_gives_the_logits_of_the_row_alone():
    model = tiny("gemma_like")
    ps = tiny_set(model)
    metric = row_metric(ps)
    batch = metric.rows(model(ps.clean_tokens))
    for i in range(len(ps)):
        alone = logit_diff(model, ANSWERS[i], BASELINES[i])(model(torch.tensor([CLEAN[i]])))
        assert abs(batch[i].item() - alone.item()) < 1e-5


@pytest.mark.real_model
def test_files_load_like_lists(tmp_path, smollm2):
    rows = [{"clean": "The capital of France is", "corrupted": "The capital of Spain is", "answer": " Paris",
             "baseline": " Madrid", "positions": {"subject": "France"}},
            {"clean": "The capital of Italy is", "corrupted": "The capital of Japan is", "answer": " Rome",
             "baseline": " Tokyo", "positions": {"subject": "Italy"}},
            {"clean": "The capital of Peru is", "corrupted": "The capital of Peru is", "answer": " Lima",
             "baseline": " Paris", "positions": {"subject": "Peru"}}]
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    csv_file = tmp_path / "set.csv"
    csv_file.write_text("clean,corrupted,answer,baseline\n" + "\n".join(
        f"{r['clean']},{r['corrupted']},{r['answer']},{r['baseline']}" for r in rows))
    from_json, from_csv = PromptSet.from_file(smollm2, jsonl), PromptSet.from_file(smollm2, csv_file)
    assert len(from_json) == len(from_csv) == 2
    assert from_json.dropped == {"clean and corrupted prompts are identical": 1}
    assert torch.equal(from_json.clean_tokens, from_csv.clean_tokens)
    subject = [smollm2.to_string(from_json.clean_tokens[i, from_json.positions["subject"][i]]) for i in range(2)]
    assert subject == [" France", " Italy"]


@pytest.mark.real_model
def test_filter_keeps_the_rows_the_model_ranks_first(smollm2):
    ps = make_dataset(smollm2, "factual", n=12, seed=1)
    kept, report = ps.filter(smollm2, by="rank")
    logits = smollm2(ps.clean_tokens)
    ranks = [int((logits[i, ps.positions["END"][i]] > logits[i, ps.positions["END"][i], ps.answer_ids[i]]).sum())
             for i in range(len(ps))]
    assert len(kept) == sum(r == 0 for r in ranks) == report.n_after
    assert abs(report.accuracy_before - report.n_after / len(ps)) < 1e-9 and report.accuracy_after == 1.0
    assert kept.dropped.get("model gets it wrong (rank)", 0) == len(ps) - len(kept)


def test_spread_matches_the_textbook_formulas():
    values = [0.5, 0.7, -0.1, 0.4, 0.6]
    s = spread(values, keep_values=True)
    mean = sum(values) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    half = 2.776445105197793 * std / math.sqrt(5)  # scipy.stats.t.ppf(0.975, 4)
    assert abs(s.mean - mean) < 1e-12 and abs(s.std - std) < 1e-12
    assert abs(s.ci95[0] - (mean - half)) < 1e-12 and abs(s.ci95[1] - (mean + half)) < 1e-12
    assert (s.n_positive, s.n_negative, s.agreement, s.values) == (4, 1, 4, values)
    assert "positive on 4/5 prompts" in s.text()
    assert abs(t_975(30) - 2.042272456301238) < 5e-4 and abs(t_975(200) - 1.971896224) < 5e-4


@pytest.mark.parametrize("name", ["gpt2_like", "gemma_like"])
def test_set_patching_equals_single_prompt_runs_row_by_row(name):
    model = tiny(name)
    ps = tiny_set(model)
    for what, positions in [("resid_pre", ["X", "END"]), ("heads", None), ("heads_by_pos", ["X"]),
                            ("pattern_by_pos", ["END"])]:
        for fn in (patch, attribution_patch):
            if fn is attribution_patch and what == "pattern_by_pos":
                continue
            options = {} if fn is attribution_patch else {"progress": False}
            result = fn(model, ps, what=what, positions=positions, per_row=True, **options)
            rows = torch.tensor(result.row_scores, dtype=torch.float64)
            for i in range(len(ps)):
                at = None if positions is None else [{"X": 2, "END": LENGTHS[i] - 1}[p] for p in positions]
                single = fn(model, torch.tensor([CLEAN[i]]), torch.tensor([CORRUPTED[i]]),
                            logit_diff(model, ANSWERS[i], BASELINES[i]), what=what, positions=at, **options)
                assert (rows[i] - single.tensor).abs().max() < 1e-5, f"{fn.__name__} {what} row {i}: " \
                    f"{max_diff(rows[i], single.tensor)}"
            assert (result.tensor - rows.mean(0)).abs().max() < 1e-12
            gap = rows.new_tensor(0.0) + result.clean_value - result.corrupted_value
            normalised = (rows.mean(0) - result.corrupted_value) / gap
            assert (torch.tensor(result.normalised, dtype=torch.float64) - normalised).abs().max() < 1e-9
            top = result.top[0]
            cell = rows[(slice(None), *[c.index(v) for c, v in zip(result.coords, top.index, strict=True)])]
            corrupted_rows = torch.tensor(_corrupted_rows(model, ps), dtype=torch.float64)
            per_row = (cell - corrupted_rows) / gap
            assert abs(top.spread.mean - per_row.mean().item()) < 1e-5
            # rows the patch leaves unchanged score exactly 0 in lens (their own base run); the reference
            # corrupted run here is another batch, so it is off by float rounding: count past 1e-6
            assert top.spread.n_positive == int((per_row > 1e-6).sum())


def _corrupted_rows(model, ps):
    return row_metric(ps).rows(model(ps.corrupted_tokens)).tolist()


@pytest.mark.real_model
@pytest.mark.parametrize("task", TASKS)
def test_generators_yield_only_valid_rows_for_both_real_tokenizers(task, smollm2, gemma3):
    for model in (smollm2, gemma3):
        ps = make_dataset(model, task, n=20, seed=3)
        assert len(ps) == 20 and ps.task == task and ps.source
        again = make_dataset(model, task, n=20, seed=3)
        assert torch.equal(ps.clean_tokens, again.clean_tokens)  # seeded
        for i, row in enumerate(ps.rows):
            n = len(row.clean_ids)
            assert len(row.corrupted_ids) == n and row.corrupted_ids != row.clean_ids
            assert row.answer_id != row.baseline_id
            if task != "induction":  # text rows: the row is the tokenizer's own tokenization of its text
                assert list(model.to_tokens(row.clean)[0]) == list(row.clean_ids)
                assert list(model.to_tokens(row.corrupted)[0]) == list(row.corrupted_ids)
                assert model.to_single_token(row.answer) == row.answer_id
            assert ps.positions["END"][i] == n - 1
        if task == "ioi":
            for i, row in enumerate(ps.rows):
                io, s1, s2 = (model.to_string([row.clean_ids[int(ps.positions[p][i])]]) for p in ("IO", "S1", "S2"))
                assert io == row.answer and s1 == s2 == row.baseline
        if task == "factual":
            for i, row in enumerate(ps.rows):
                start, stop = ps.spans["subject"][i].tolist()
                assert model.to_string(list(row.clean_ids[start:stop])).strip() in row.clean


@pytest.mark.real_model
def test_ioi_variants_on_the_default_model(smollm2):
    abc = make_dataset(smollm2, "ioi", n=8, corruption="abc")
    for i, row in enumerate(abc.rows):
        s2 = int(abc.positions["S2"][i])
        third = smollm2.to_string([row.corrupted_ids[s2]])
        assert third not in (row.answer, row.baseline)
    orders = {int(abc.positions["IO"][i] < abc.positions["S1"][i]) for i in range(len(abc))}
    assert orders == {0, 1}  # ABBA and BABA
    noise = make_dataset(smollm2, "factual", n=4, corruption="noise")
    assert noise.corruption == "noise" and noise.corrupted_tokens is None
    with pytest.raises(ValueError, match="corruption"):
        make_dataset(smollm2, "induction", n=4, corruption="abc")


def _single_rows(fn, model, per_row_result, **options):
    """max |Δ| between a set result's row_scores and fn run on each row alone (positions by row)."""
    worst = 0.0
    for i in range(len(CLEAN)):
        at = dict(options)
        if "positions" in at:
            at["positions"] = [{"X": 2, "END": LENGTHS[i] - 1}[p] for p in at["positions"]]
        single = fn(model, torch.tensor([CLEAN[i]]), torch.tensor([CORRUPTED[i]]),
                    logit_diff(model, ANSWERS[i], BASELINES[i]), progress=False, **at)
        rows = torch.tensor(per_row_result.row_scores[i], dtype=torch.float64)
        worst = max(worst, (rows - single.tensor).abs().max().item())
    return worst


@pytest.mark.parametrize("name", ["gpt2_like", "gemma_like"])
def test_set_path_patching_and_ablation_equal_single_prompt_runs(name):
    model = tiny(name)
    ps = tiny_set(model)
    for options in [dict(receivers="logits"), dict(receivers="L2H1.q"), dict(receivers="L2H0.k", positions=["X"]),
                    dict(receivers="L2.mlp", senders="mlps")]:
        result = path_patch(model, ps, per_row=True, progress=False, **options)
        assert _single_rows(path_patch, model, result, **options) < 1e-5, options
    for options in [dict(what="heads"), dict(what="mlp", positions=["END"]),
                    dict(components=["L1H2", "L0.mlp"], together=True)]:
        result = ablate(model, ps, per_row=True, progress=False, **options)
        worst = 0.0
        for i in range(len(CLEAN)):
            at = dict(options)
            if "positions" in at:
                at["positions"] = [LENGTHS[i] - 1]
            single = ablate(model, torch.tensor([CLEAN[i]]), logit_diff(model, ANSWERS[i], BASELINES[i]),
                            progress=False, **at)
            worst = max(worst, (torch.tensor(result.row_scores[i], dtype=torch.float64) - single.tensor).abs().max())
        assert worst < 1e-5, options
        assert result.n_rows == 4 and result.top[0].spread.n == 4


@pytest.mark.parametrize("name", ["gpt2_like", "gemma_like"])
def test_set_dla_equals_single_prompt_runs(name):
    model = tiny(name)
    ps = tiny_set(model)
    for by in ["layer", "head", "neuron"]:
        result = direct_logit_attribution(model, ps, by=by, per_row=True, top_k=1000)
        for i in range(len(CLEAN)):
            single = dict(direct_logit_attribution(model, torch.tensor([CLEAN[i]]), ANSWERS[i], BASELINES[i], by=by,
                                                   top_k=1000).contributions)
            for j, (label, _) in enumerate(result.contributions):
                assert abs(single[label] - result.row_values[i][j]) < 1e-5, (by, i, label)
        mean = torch.tensor(result.row_values).mean(0)
        assert (mean - torch.tensor([v for _, v in result.contributions])).abs().max() < 1e-6
        assert result.spreads[0].n == 4 and result.total_spread.n == 4


@pytest.mark.parametrize("name", ["gpt2_like", "gemma_like"])
def test_causal_tracing_equals_a_hand_written_loop(name):
    model = tiny(name)
    ps = PromptSet.from_lists(model, CLEAN, answer=ANSWERS, corruption="noise", positions={"subject": (1, 3), "X": 2})
    samples, names = 2, ["subject", "X", "END"]
    for what in ("resid", "mlp" if name == "gpt2_like" else "attn"):
        result = causal_trace(model, ps, what, positions=names, samples=samples, window=2, progress=False,
                              per_row=True)
        noise = trace_noise(model, ps, "subject", 3.0, samples, 0)
        hook = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}[what]
        for i, row in enumerate(ps.rows):
            tokens, n = torch.tensor([row.clean_ids]), len(row.clean_ids)
            _, clean_cache = model.run_with_cache(tokens)
            where = {"subject": [1, 2], "X": [2], "END": [n - 1]}
            for layer in range(3):
                for p, name_ in enumerate(names):
                    probs = []
                    for s in range(samples):
                        added = noise[s * len(ps) + i, :n]
                        hooks = [("hook_embed", lambda e, point, added=added: e + added)]
                        for l in [layer] if what == "resid" else window_layers(layer, 2, 3):
                            name = act_name(hook, l)

                            def restore(a, point, clean=clean_cache[name], at=where[name_]):
                                a = a.clone()
                                a[:, at] = clean[:, at]
                                return a
                            hooks.append((name, restore))
                        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
                        probs.append(logits[0, -1].softmax(-1)[row.answer_id].item())
                    assert abs(sum(probs) / samples - result.row_scores[i][layer][p]) < 1e-6, (what, i, layer, name_)
        assert result.clean_value != result.corrupted_value


def test_one_steer_call_equals_a_call_per_setting():
    model = tiny()
    prompt = torch.tensor([[3, 14, 15, 9, 2]])
    vector = model.W_U[:, 7] / model.W_U[:, 7].norm()
    both = steer(model, prompt, vector, layer=[0, 2], coefficients=[0.0, 20.0, -20.0], max_new_tokens=6, tokens=[7])
    assert [(g.layer, g.coefficient) for g in both.generations] == [(0, 0.0), (0, 20.0), (0, -20.0), (2, 0.0),
                                                                    (2, 20.0), (2, -20.0)]
    for g in both.generations:
        alone = steer(model, prompt, vector, layer=g.layer, coefficients=[g.coefficient], max_new_tokens=6,
                      tokens=[7]).generations[0]
        assert alone.text == g.text and abs(alone.logit_shifts["<7>"] - g.logit_shifts["<7>"]) < 1e-5
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False)
    assert both.generations[0].text == str(plain[0, 5:].tolist())


def test_set_logit_lens_and_attention_equal_single_prompt_readings():
    model = tiny("gemma_like")
    ps = tiny_set(model)
    lens_result = logit_lens(model, ps)
    attention = attention_patterns(model, ps, [(1, 2), (2, 0)])
    # the means are the means of the single-prompt figures
    singles = [logit_lens(model, torch.tensor([c]), targets=[a]) for c, a in zip(CLEAN, ANSWERS, strict=True)]
    for j, layer in enumerate(lens_result.layers):
        expected = sum(s.layers[j].targets[0].prob for s in singles) / len(singles)
        assert abs(layer.answer_prob.mean - expected) < 1e-6
        assert layer.answer_top == sum(s.layers[j].targets[0].rank == 0 for s in singles)
    rows = [attention_patterns(model, torch.tensor([c]), [(1, 2), (2, 0)]) for c in CLEAN]
    for h, head in enumerate(attention.heads):  # the key X is token 2 of every row
        expected = sum(r.heads[h].pattern[-1][2] for r in rows) / len(rows)
        assert abs(head.to["X"].mean - expected) < 1e-6 and head.to["X"].n == len(rows)


def test_steering_a_set_shifts_each_rows_metric_as_a_hook_would():
    model = tiny()
    ps = tiny_set(model)
    vector = model.W_U[:, 3] - model.W_U[:, 8]
    result = steer(model, ps, vector, layer=[1, 2], coefficients=[0.0, 5.0])
    assert result.settings == [(1, 0.0), (1, 5.0), (2, 0.0), (2, 5.0)]
    for (layer, coefficient), shift in zip(result.settings, result.shifts, strict=True):
        expected, delta = [], coefficient * vector
        for i in range(len(CLEAN)):
            tokens, metric = torch.tensor([CLEAN[i]]), logit_diff(model, ANSWERS[i], BASELINES[i])
            steered = model.run_with_hooks(tokens, fwd_hooks=[(act_name("resid_post", layer),
                                                               lambda x, point, delta=delta: x + delta)])
            expected.append((metric(steered) - metric(model(tokens))).item())
        assert abs(shift.mean - sum(expected) / len(expected)) < 1e-5, (layer, coefficient)
    assert result.shifts[0].mean == 0.0


def test_set_head_scores_are_the_means_of_single_prompt_scores():
    model = tiny("gemma_like")
    ps = tiny_set(model)
    result = detect_heads(model, "previous_token", prompt=ps)
    singles = torch.stack([torch.tensor(detect_heads(model, "previous_token", prompt=torch.tensor([c])).scores)
                           for c in CLEAN])
    assert (torch.tensor(result.scores) - singles.mean(0)).abs().max() < 1e-6
    assert result.n_rows == 4 and result.spread.n == 4
    induction = make_dataset(model, "induction", n=3, seed=0)
    scores = detect_heads(model, "induction", prompt=induction)
    _, cache = model.run_with_cache(induction.clean_tokens)
    start, stop = induction.spans["first_copy"][0].tolist()
    n = int(induction.lengths[0])
    queries = torch.arange(stop, n)
    first_row = torch.stack([cache["pattern", l][0][:, queries, queries - (stop - start) + 1].mean(-1)
                             for l in range(3)])  # no BOS: a random model's config has none
    rows = set_head_scores(model, induction, "induction", per_row=True).spread.per_row
    assert (torch.tensor(rows[0]) - first_row).abs().max() < 1e-6
    assert (torch.tensor(scores.scores) - torch.tensor(rows).mean(0)).abs().max() < 1e-6
