"""The tools over prompt sets: list arguments and dataset handles give the same figures as lens's Python
set functions (means, spreads, sign agreement, rows used and dropped), and the errors say how to pass
several prompts."""

from __future__ import annotations

import json

import pytest
from test_mcp_support import close, ok, refused, run, tiny_model, tiny_server

from lens import patching
from lens.analysis import direct_logit_attribution
from lens.data import PromptSet, make_dataset

A, B = "When Mary and John went to the store, {} gave a drink to", "When John and Mary went to the store, {} gave a drink to"
ROWS = {  # IOI rows, names swapped at S2; one row longer than the rest (padded in the batch)
    "clean": [A.format("John"), B.format("Mary"), A.format("Mary"), B.format("John"),
              "Then, " + A.format("John")],
    "corrupted": [A.format("Mary"), B.format("John"), A.format("John"), B.format("Mary"),
                  "Then, " + A.format("Mary")],
    "answer": [" Mary", " John", " John", " Mary", " Mary"],
    "baseline": [" John", " Mary", " Mary", " John", " John"],
}


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture
def server(model, tmp_path):
    return tiny_server(model, tmp_path)


@pytest.fixture(scope="module")
def ps(model):
    built = PromptSet.from_lists(model, ROWS["clean"], ROWS["corrupted"], ROWS["answer"], ROWS["baseline"])
    assert len(built) == 5 and not built.dropped, built.summary()
    return built


def same_spread(got: dict | None, want) -> bool:
    return got is not None and close(got["std"], want.std) and got["agree"] == want.agreement and \
        got["n"] == want.n and all(close(a, b) for a, b in zip(got["ci95"], want.ci95, strict=True))


def same_hotspots(got: list[dict], want) -> None:
    assert [h["label"] for h in got] == [h.label for h in want], ([h["label"] for h in got], [h.label for h in want])
    for g, w in zip(got, want, strict=True):
        assert close(g["score"], w.score) and close(g["effect"], w.effect), (g, w)
        assert (g["normalised"] is None) == (w.normalised is None) and \
            (w.normalised is None or close(g["normalised"], w.normalised)), (g, w)
        assert same_spread(g["spread"], w.spread), (g["spread"], w.spread)


def test_patch_with_lists_equals_the_python_set_patch(server, model, ps):
    result = run(server, lambda c: ok(c, "patch", ROWS | {"what": "heads", "top_k": 5, "plot": False}))
    want = patching.patch(model, ps, metric="logit_diff", what="heads", top_k=5, progress=False)
    same_hotspots(result["hotspots"], want.top)
    assert close(result["clean_value"], want.clean_value) and close(result["corrupted_value"], want.corrupted_value)
    assert result["set"] == {"rows": 5, "dropped": {}}
    top = want.top[0]
    assert "±" in result["interpretation"] and f"on {top.spread.agreement}/5 prompts" in result["interpretation"]
    assert "over 5 prompts" in result["interpretation"]


def test_one_answer_for_every_row_and_a_dropped_row_are_reported(server, model):
    clean, corrupted = [A.format("John"), "Then, " + A.format("John"), A.format("John") + " the"], \
        [A.format("Mary"), "Then, " + A.format("Mary"), A.format("Mary")]  # the last pair differs in length
    result = run(server, lambda c: ok(c, "patch", {"clean": clean, "corrupted": corrupted, "answer": " Mary",
                                                  "baseline": " John", "what": "heads", "plot": False}))
    want = patching.patch(model, PromptSet.from_lists(model, clean[:2], corrupted[:2], " Mary", " John"),
                          metric="logit_diff", what="heads", progress=False)
    assert result["set"] == {"rows": 2, "dropped": {"clean and corrupted token counts differ": 1}}
    same_hotspots(result["hotspots"], want.top)
    assert "1 dropped" in result["interpretation"]


def test_attribution_path_patching_ablation_and_dla_with_lists_equal_python(server, model, ps):
    async def scenario(client):
        return (await ok(client, "attribution_patch", ROWS | {"what": "heads", "top_k": 4, "plot": False}),
                await ok(client, "path_patch", ROWS | {"receivers": ["L2H1.q"], "top_k": 4, "plot": False}),
                await ok(client, "ablate", {"prompt": ROWS["clean"], "answer": ROWS["answer"],
                                            "baseline": ROWS["baseline"], "top_k": 4, "plot": False}),
                await ok(client, "logit_attribution", {"prompt": ROWS["clean"], "answer": ROWS["answer"],
                                                       "baseline": ROWS["baseline"], "top_k": 4, "plot": False}))
    attribution, path, ablation, dla = run(server, scenario)
    same_hotspots(attribution["hotspots"], patching.attribution_patch(model, ps, metric="logit_diff", what="heads",
                                                                      top_k=4).top)
    same_hotspots(path["hotspots"], patching.path_patch(model, ps, metric="logit_diff", receivers=["L2H1.q"],
                                                        top_k=4, progress=False).top)
    reading = PromptSet.from_lists(model, ROWS["clean"], None, ROWS["answer"], ROWS["baseline"], corruption="noise")
    same_hotspots(ablation["hotspots"], patching.ablate(model, reading, "logit_diff", top_k=4, progress=False).top)
    want = direct_logit_attribution(model, reading, by="head", top_k=4)
    assert [c["component"] for c in dla["contributions"]] == [c for c, _ in want.contributions]
    for got, (_, value), s in zip(dla["contributions"], want.contributions, want.spreads, strict=True):
        assert close(got["value"], value) and same_spread(got["spread"], s), (got, value, s)
    assert [c["component"] for c in dla["others"]] == [c for c, _ in want.others]
    assert dla["set"]["rows"] == 5 and close(dla["total"], want.total)


def test_a_dataset_handle_runs_the_generated_set(server, model):
    async def scenario(client):
        made = await ok(client, "dataset", {"task": "induction", "n": 6, "seed": 1})
        patched = await ok(client, "patch", {"dataset": made["dataset"], "what": "heads", "top_k": 3, "plot": False})
        by_name = await ok(client, "patch", {"dataset": made["dataset"], "what": "resid_pre", "positions": ["source",
                                                                                                           "END"],
                                             "plot": False})
        return made, patched, by_name
    made, patched, by_name = run(server, scenario)
    generated = make_dataset(model, "induction", n=6, seed=1)
    assert made["rows"] == 6 and made["positions"] == generated.position_names and made["dropped"] == {}
    assert made["example"]["answer"] == generated.rows[0].answer
    same_hotspots(patched["hotspots"], patching.patch(model, generated, metric="logit_diff", what="heads", top_k=3,
                                                      progress=False).top)
    want = patching.patch(model, generated, metric="logit_diff", what="resid_pre", positions=["source", "END"],
                          progress=False)
    same_hotspots(by_name["hotspots"], want.top)
    assert by_name["shape"] == [model.cfg.n_layers, 2] and len(by_name["best_pos"]) == model.cfg.n_layers


def test_a_dataset_file_loads_from_inside_the_output_folder_only(server, tmp_path):
    folder = tmp_path / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"clean": c, "corrupted": k, "answer": a, "baseline": b}
            for c, k, a, b in zip(ROWS["clean"], ROWS["corrupted"], ROWS["answer"], ROWS["baseline"], strict=True)]
    (folder / "ioi.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "outside.jsonl").write_text(json.dumps(rows[0]))

    async def scenario(client):
        return (await ok(client, "dataset", {"path": "ioi.jsonl"}),
                await refused(client, "dataset", {"path": str(tmp_path / "outside.jsonl")}),
                await refused(client, "dataset", {"path": "../outside.jsonl"}))
    loaded, absolute, relative = run(server, scenario)
    assert loaded["rows"] == 5 and loaded["example"]["clean"] == ROWS["clean"][0]
    assert "outside the output folder" in absolute and "outside the output folder" in relative


def test_mistakes_with_sets_are_errors_that_say_what_to_do(server):
    async def scenario(client):
        return [await refused(client, "generate", {"prompt": ["a", "b"]}),
                await refused(client, "run_with_cache", {"prompt": ROWS["clean"]}),
                await refused(client, "patch", {"clean": ROWS["clean"], "corrupted": ROWS["corrupted"]}),
                await refused(client, "patch", {"dataset": "d9"}),
                await refused(client, "patch", {"clean": ROWS["clean"][0], "corrupted": ROWS["clean"][0],
                                                "answer": " Mary"}),
                await refused(client, "patch", ROWS | {"metric": "loss"}),
                await refused(client, "dataset", {"task": "induction", "path": "x.jsonl"})]
    generate, cache, no_answer, no_dataset, identical, loss, both = run(server, scenario)
    assert "takes one string" in generate and "dataset" in generate and "patch" in generate
    assert "takes one string" in cache
    assert "give answer" in no_answer
    assert "no dataset 'd9'" in no_dataset
    assert "identical" in identical
    assert "over a set use logit_diff" in loss
    assert "not both" in both


def test_logit_lens_attention_and_steer_over_a_set_equal_python(server, model):
    from lens.analysis import attention_patterns, logit_lens, steer, steering_vector

    async def scenario(client):
        made = await ok(client, "dataset", {"task": "induction", "n": 6, "seed": 2})
        lens = await ok(client, "logit_lens", {"dataset": made["dataset"], "plot": False})
        listed = await ok(client, "logit_lens", {"prompt": ROWS["clean"], "targets": ROWS["answer"], "plot": False})
        attention = await ok(client, "attention_pattern", {"dataset": made["dataset"], "heads": ["L1H1", "L2H0"]})
        steered = await ok(client, "steer", {"prompt": ROWS["clean"], "answer": ROWS["answer"],
                                             "baseline": ROWS["baseline"], "positive": ["Mary gave"],
                                             "negative": ["John went"], "layer": 1, "coefficients": [0, 4]})
        return lens, listed, attention, steered
    lens, listed, attention, steered = run(server, scenario)
    generated = make_dataset(model, "induction", n=6, seed=2)
    want = logit_lens(model, generated)
    assert all(close(got, layer.answer_prob.mean) for got, layer in zip(lens["probs"][0], want.layers, strict=True))
    assert lens["top_rows"] == [layer.answer_top for layer in want.layers] and lens["set"]["rows"] == 6
    reading = PromptSet.from_lists(model, ROWS["clean"], None, ROWS["answer"], corruption="noise")
    want = logit_lens(model, reading)
    assert all(close(got, layer.answer_prob.mean) for got, layer in zip(listed["probs"][0], want.layers, strict=True))
    want = attention_patterns(model, generated, [(1, 1), (2, 0)])
    for got, head in zip(attention["heads"], want.heads, strict=True):
        assert set(got["to"]) == set(head.to)
        assert all(close(got["to"][k][0], s.mean) for k, s in head.to.items()), (got["to"], head.to)
    vector = steering_vector(model, ["Mary gave"], ["John went"], 1)
    rows = PromptSet.from_lists(model, ROWS["clean"], None, ROWS["answer"], ROWS["baseline"], corruption="noise")
    want = steer(model, rows, vector, 1, coefficients=[0, 4])
    for got, s in zip(steered["shifts"], want.shifts, strict=True):
        assert close(got[0], s.mean, rel=1e-3) and got[2] == s.agreement, (got, s)
    assert steered["set"]["rows"] == 5 and "x4:" in steered["interpretation"]
