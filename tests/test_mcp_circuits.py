"""find_circuit and evaluate_circuit through a real in-process mcp.Client on a tiny model, against lens.circuits."""

import json
from pathlib import Path

import pytest
import torch
from test_mcp_support import IOI_CLEAN, IOI_CORRUPTED, ok, refused, run, tiny_model, tiny_server

from lens import circuits
from lens.data import PromptSet, kl_divergence, span_loss
from lens.data.metrics import row_metric

ROWS = {"clean": [IOI_CLEAN, IOI_CORRUPTED], "corrupted": [IOI_CORRUPTED, IOI_CLEAN],
        "answer": [" Mary", " John"], "baseline": [" John", " Mary"]}
# two IOI rows whose clean and corrupted means differ (ROWS's two rows mirror each other)
TWO = {"clean": [IOI_CLEAN, "When John and Mary went to the store, Mary gave a drink to"],
       "corrupted": [IOI_CORRUPTED, "When John and Mary went to the store, John gave a drink to"],
       "answer": [" Mary", " John"], "baseline": [" John", " Mary"]}


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def test_find_circuit_returns_the_lens_circuit_a_plot_and_a_handle_evaluate_circuit_reuses(model, tmp_path):
    server = tiny_server(model, tmp_path)

    async def scenario(client):
        found = await ok(client, "find_circuit", {**ROWS, "method": "eap", "edges": 25})
        again = await ok(client, "evaluate_circuit", {"circuit": found["circuit"]})
        mean = await ok(client, "evaluate_circuit", {"circuit": found["circuit"], "ablation": "mean"})
        nodes = await ok(client, "evaluate_circuit", {"circuit": found["circuit"], "nodes": ["L0H1", "L2H3"]})
        bad = await refused(client, "evaluate_circuit", {"circuit": found["circuit"], "nodes": ["L9H0"]})
        missing = await refused(client, "evaluate_circuit", {"circuit": "k99"})
        return found, again, mean, nodes, bad, missing
    found, again, mean, nodes, bad, missing = run(server, scenario)
    ps = PromptSet.from_lists(model, **ROWS)
    expected = circuits.find_circuit(model, ps, metric=row_metric(ps, "logit_diff"), method="eap", edges=25)
    assert found["faithfulness"]["value"] == pytest.approx(expected.faithfulness.value, rel=1e-4, abs=1e-6)
    assert found["faithfulness"]["n_edges"] == expected.circuit.n_edges
    assert found["nodes"] == expected.circuit.nodes
    assert again["faithfulness"]["value"] == pytest.approx(found["faithfulness"]["value"], rel=1e-6, abs=1e-9)
    assert mean["interpretation"].endswith("(mean ablation)")
    assert nodes["nodes"][0] == "input" and set(nodes["nodes"]) <= {"input", "L0H1", "L2H3", "logits"}
    saved = circuits.Circuit.load(found["json_path"])
    assert saved.n_edges == expected.circuit.n_edges
    assert Path(found["plot"]["path"]).read_bytes()[:4] == b"\x89PNG"
    assert "no node 'L9H0'" in bad and "no circuit 'k99'" in missing
    assert len(json.dumps(found)) <= 4096 and len(found["curve"]) >= 5


def test_a_dataset_handle_gives_the_same_circuit_as_the_same_rows_given_as_lists(model, tmp_path):
    folder = tmp_path / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [dict(zip(TWO, values, strict=True)) for values in zip(*TWO.values(), strict=True)]
    (folder / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    nodes = ["L0H1", "L1.mlp", "L2H3"]

    async def scenario(client):
        made = await ok(client, "dataset", {"path": "rows.jsonl"})
        by_handle = await ok(client, "find_circuit", {"dataset": made["dataset"], "method": "eap", "edges": 25,
                                                      "plot": False})
        by_lists = await ok(client, "find_circuit", {**TWO, "method": "eap", "edges": 25, "plot": False})
        evaluated = [await ok(client, "evaluate_circuit", {"nodes": nodes, **given})
                     for given in ({"dataset": made["dataset"]}, TWO)]
        loss = await ok(client, "evaluate_circuit", {"nodes": nodes, "dataset": made["dataset"], "metric": "loss",
                                                     "span": [2, -2]})
        return by_handle, by_lists, evaluated, loss
    by_handle, by_lists, (nodes_by_handle, nodes_by_lists), loss = run(tiny_server(model, tmp_path), scenario)
    assert by_handle["faithfulness"] == by_lists["faithfulness"] and by_handle["nodes"] == by_lists["nodes"]
    assert by_handle["top_edges"] == by_lists["top_edges"] and "over 2 prompts" in by_handle["interpretation"]
    assert nodes_by_handle["faithfulness"] == nodes_by_lists["faithfulness"]
    ps = PromptSet.from_lists(model, **TWO)
    graph = circuits.Graph.of(model)
    for got, metric in ((nodes_by_lists, row_metric(ps, "logit_diff")), (loss, span_loss(ps, (2, -2)))):
        want = circuits.evaluate(model, circuits.Circuit.from_nodes(graph, nodes), ps, metric)[0]
        assert got["faithfulness"]["value"] == pytest.approx(want.value, rel=1e-4, abs=1e-6)
        assert got["faithfulness"]["clean_value"] == pytest.approx(want.clean_value, rel=1e-4, abs=1e-6)
    assert "next-token loss over positions 2..-2" in loss["interpretation"]


def test_a_single_prompt_pair_is_the_set_of_one(model, tmp_path):
    one = {"clean": IOI_CLEAN, "corrupted": IOI_CORRUPTED, "answer": " Mary", "baseline": " John"}

    async def scenario(client):
        return await ok(client, "evaluate_circuit", {**one, "nodes": ["L0H1", "L2H3"], "metric": "kl"})
    got = run(tiny_server(model, tmp_path), scenario)
    ps = PromptSet.from_lists(model, [IOI_CLEAN], [IOI_CORRUPTED], " Mary", " John")
    want = circuits.evaluate(model, ["L0H1", "L2H3"], ps, kl_divergence(model, ps))[0]
    assert got["faithfulness"]["value"] == pytest.approx(want.value, rel=1e-4, abs=1e-6)
    assert got["faithfulness"]["clean_value"] == pytest.approx(0, abs=1e-6)  # KL of the clean run to itself
    assert got["faithfulness"]["n_prompts"] == 1


def test_circuit_tools_refuse_bad_mixes_of_prompt_arguments_before_any_compute(model, tmp_path):
    async def scenario(client):
        made = await ok(client, "dataset", {"task": "induction", "n": 4})
        return [await refused(client, "find_circuit", {"clean": [IOI_CLEAN]}),
                await refused(client, "find_circuit", {}),
                await refused(client, "find_circuit", {"dataset": made["dataset"], "clean": IOI_CLEAN}),
                await refused(client, "find_circuit", {"clean": [IOI_CLEAN], "answer": " Mary"}),
                await refused(client, "find_circuit", {"dataset": made["dataset"], "span": [1, -2]}),
                await refused(client, "find_circuit", {"dataset": made["dataset"], "metric": "kl", "method": "eap"}),
                await refused(client, "find_circuit", {"dataset": "d99"}),
                await refused(client, "evaluate_circuit", {"nodes": ["L0H1"]}),
                await refused(client, "investigate", {"task": "ioi", "dataset": made["dataset"]})]
    said = run(tiny_server(model, tmp_path), scenario)
    expected = ["give answer", "give the prompt", "give either dataset or clean/prompt, not both",
                "give corrupted prompts, one per clean prompt", "span is the positions metric='loss' averages over",
                "use method='eap-ig'", "no dataset 'd99'", "give a circuit handle", "not both"]
    for text, part in zip(said, expected, strict=True):
        assert part in text, (part, text)


def test_investigate_writes_a_report_whose_claims_the_tool_returns(model, tmp_path):
    async def scenario(client):
        return await ok(client, "investigate", {**ROWS})
    result = run(tiny_server(model, tmp_path), scenario)
    report = Path(result["report"]).read_text()
    assert len(json.dumps(result)) <= 4096 and len(result["claims"]) == 6
    for claim in result["claims"]:
        assert claim.rstrip("…")[:60] in report
    for section in ("Logit lens", "Direct logit attribution", "Residual stream patching", "Head patching",
                    "The circuit"):
        assert f"## {section}" in report
    pictures = [line.split("(")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(pictures) == 5 and all((Path(result["report"]).parent / p).exists() for p in pictures)


def test_investigations_logit_lens_ends_at_the_models_output_and_dla_matches_the_single_prompt_analysis(model, tmp_path):
    from lens import investigate
    from lens.analysis import direct_logit_attribution
    ps = PromptSet.from_lists(model, **ROWS)
    metric = row_metric(ps, "logit_diff")
    report = investigate(model, ps, metric, tmp_path / "inv")
    with torch.no_grad():
        clean = float(metric(model(ps.clean_tokens)))
    assert abs(float(report.grids["logit_lens"][-1]) - clean) <= 1e-5
    # row 0's DLA by head equals direct_logit_attribution on that prompt alone
    single = direct_logit_attribution(model, IOI_CLEAN, " Mary", " John", by="head")
    grid = torch.tensor(single.head_grid, dtype=torch.float64)
    rows = report.grids["dla_rows"][0]
    assert (rows - grid).abs().max() <= 1e-4, (rows - grid).abs().max()
    assert grid.abs().max() > 1e-3


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_scores_over_a_set_do_not_depend_on_how_its_rows_are_chunked(model, method):
    ps = PromptSet.from_lists(model, **ROWS)
    metric = row_metric(ps, "logit_diff")
    whole = circuits.edge_scores(model, ps, metric, method).scores
    one_row_at_a_time = circuits.edge_scores(model, ps, metric, method, memory_budget=1).scores
    assert (whole - one_row_at_a_time).abs().max() <= 1e-5 * whole.abs().max(), (whole - one_row_at_a_time).abs().max()
