"""find_circuit and evaluate_circuit through a real in-process mcp.Client on a tiny model, against lens.circuits."""

import json
from pathlib import Path

import pytest
import torch
from test_mcp_support import IOI_CLEAN, IOI_CORRUPTED, ok, refused, run, tiny_model, tiny_server

from lens import circuits
from lens.data import PromptSet
from lens.data.metrics import row_metric

ROWS = {"clean": [IOI_CLEAN, IOI_CORRUPTED], "corrupted": [IOI_CORRUPTED, IOI_CLEAN],
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


def test_find_circuit_refuses_a_request_without_prompts(model, tmp_path):
    async def scenario(client):
        return await refused(client, "find_circuit", {"clean": [IOI_CLEAN]})
    assert "give task=" in run(tiny_server(model, tmp_path), scenario)


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
