"""Automated circuit discovery: find_circuit (edge scores → a circuit with its exact faithfulness, stored under a
handle), evaluate_circuit (faithfulness of a stored, edited or hand-written circuit) and investigate (the
standard battery as a report). Prompts come as every set-taking tool takes them (mcp_server.sets): a
dataset handle, or clean/corrupted/answer/baseline as one string or one entry per row."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from lens import circuits as lc
from lens.data import PromptSet, make_dataset
from lens.data.metrics import row_metric
from mcp_server.plots import DrawPlot, PlotPath
from mcp_server.schemas import ModelRef, Num, Part, Plot, ToolResult
from mcp_server.sets import DatasetRef, Rows, Span, TokenRows, is_list, prompt_set
from mcp_server.state import state_of
from mcp_server.tools.annotations import STORING

MetricKind = Annotated[Literal["logit_diff", "logit", "prob", "logprob", "kl", "loss"], Field(
    description="per row at its last token: logit(answer)-logit(baseline), logit, p or log p of the answer, or "
                "KL(clean||run); loss: next-token loss over span")]
Ablation = Annotated[Literal["corrupted", "mean"], Field(
    description="out-of-circuit edges read the corrupted run, or its mean over the set's corrupted prompts")]
Names = Annotated[list[Annotated[str, Field(max_length=40)]] | None, Field(max_length=5000)]


class Faithfulness(Part):
    value: Num = Field(description="(m(circuit)-m(empty))/(m(clean)-m(empty)), m the mean over prompts")
    std: Num = Field(description="bootstrap standard error over prompts")
    ci95: list[Num]
    n_edges: int
    n_prompts: int
    circuit_value: Num
    clean_value: Num
    empty_value: Num


class CircuitResult(ToolResult):
    circuit: str = Field(description="handle for evaluate_circuit")
    json_path: str
    faithfulness: Faithfulness
    nodes: list[str]
    top_edges: list[str] = Field(description="'sender->receiver score', largest |score| first")
    curve: list[list[Num]] = Field(description="[edges, faithfulness, std] of top-n circuits")
    plot: Plot | None = None


def _faith(f: lc.Faithfulness) -> Faithfulness:
    return Faithfulness(value=f.value, std=f.std, ci95=[f.low, f.high], n_edges=f.n_edges, n_prompts=f.n_prompts,
                        circuit_value=f.circuit_value, clean_value=f.clean_value, empty_value=f.empty_value)


def _said(f: lc.Faithfulness, metric) -> str:
    return (f"{f.n_edges} edges carry {f.value:.0%} ± {f.std:.0%} (95% CI {f.low:.0%}..{f.high:.0%}) of the change "
            f"in {metric} from {f.empty_value:+.3f} (empty) to {f.clean_value:+.3f} (clean) over {f.n_prompts} prompts")


def _prompts(state, entry, dataset, clean, corrupted, answer, baseline) -> PromptSet:
    """The set a call names (sets.py: a dataset handle or one entry per row); one prompt is the set of one."""
    if dataset is None and clean is not None and not is_list(clean, corrupted, answer, baseline):
        clean, corrupted = [clean], None if corrupted is None else [corrupted]
    return prompt_set(state, entry, dataset, clean, corrupted, answer, baseline)


def _dropped(ps: PromptSet) -> str:
    n = sum(ps.dropped.values())
    return f"; {n} rows dropped: {ps.dropped}" if n else ""


def _metric(m, ps: PromptSet, kind: str, span):
    if span is not None and kind != "loss":
        raise ToolError(f"span is the positions metric='loss' averages over; metric={kind!r} reads each row's last "
                        f"token")
    return row_metric(ps, kind, model=m, span=None if span is None else tuple(span))


def find_circuit(
    ctx: Context,
    clean: Rows | None = None,
    corrupted: Rows | None = None,
    answer: TokenRows | None = None,
    baseline: TokenRows | None = None,
    dataset: DatasetRef = None,
    metric: MetricKind = "logit_diff",
    span: Span = None,
    method: Annotated[Literal["eap", "eap-ig"], Field(description="eap-ig: more faithful, ~3x slower")] = "eap-ig",
    edges: Annotated[int | None, Field(ge=1, le=100_000, description="keep the top n edges")] = None,
    faithfulness: Annotated[float | None, Field(gt=0, le=1, description="or: the smallest circuit reaching it")] = None,
    ablation: Ablation = "corrupted",
    plot: DrawPlot = True,
    plot_path: PlotPath = None,
    model: ModelRef = None,
) -> CircuitResult:
    """Automated circuit discovery over a prompt set: score every edge (head/MLP/input → q/k/v/MLP/logits)
    by attribution (EAP or EAP-IG), keep the top edges (default: the smallest circuit with faithfulness
    0.8), prune, and measure faithfulness exactly with its spread. Plot: the circuit by layer."""
    state = state_of(ctx)
    target = state.plots.target(plot, "circuit", plot_path)
    with state.using(model) as entry:
        m = entry.model
        ps = _prompts(state, entry, dataset, clean, corrupted, answer, baseline)
        row = _metric(m, ps, metric, span)
        found = lc.find_circuit(m, ps, metric=row, method=method, edges=edges,
                                faithfulness=faithfulness if edges or faithfulness else 0.8, ablation=ablation)
        stored = state.store_circuit(entry.handle, found, ps, row)
    f = found.faithfulness
    return CircuitResult(
        model=entry.handle, circuit=stored.handle, json_path=str(stored.path), faithfulness=_faith(f),
        nodes=found.circuit.nodes[:80], top_edges=[f"{s}->{r} {v:+.3g}" for s, r, v in found.circuit.edge_list()[:15]],
        curve=[list(p) for p in found.curve.points()], plot=state.plots.draw(found.plot, target),
        interpretation=f"{method} circuit: {_said(f, row.name)}" + _dropped(ps))


def evaluate_circuit(
    ctx: Context,
    circuit: Annotated[str | None, Field(max_length=20, description="a find_circuit handle")] = None,
    edges: Names = None,
    nodes: Names = None,
    ablation: Ablation = "corrupted",
    clean: Rows | None = None,
    corrupted: Rows | None = None,
    answer: TokenRows | None = None,
    baseline: TokenRows | None = None,
    dataset: DatasetRef = None,
    metric: Annotated[MetricKind | None, Field(description="default: the handle's, else logit_diff")] = None,
    span: Span = None,
    model: ModelRef = None,
) -> CircuitResult:
    """Exact faithfulness (with bootstrap spread) of a circuit: a stored handle, or edges
    ['L9H6->logits', 'L5H1->L9H6.q'] or nodes ['L9H6', 'L3.mlp'] (every edge among them), on the
    handle's prompt set and metric or on the prompts given."""
    state = state_of(ctx)
    with state.using(model) as entry:
        m = entry.model
        stored = state.circuit(circuit, entry.handle) if circuit else None
        if stored is not None and dataset is None and clean is None:
            ps, row = stored.prompt_set, stored.metric
            if metric is not None or span is not None:
                row = _metric(m, ps, metric or "logit_diff", span)
        elif stored is None and dataset is None and clean is None:
            raise ToolError("give a circuit handle (its prompt set is reused), or the prompts: dataset=<handle> or "
                            "clean/corrupted/answer (one entry per row)")
        else:
            ps = _prompts(state, entry, dataset, clean, corrupted, answer, baseline)
            row = _metric(m, ps, metric or "logit_diff", span)
        graph = lc.Graph.of(m)
        try:
            given = lc.Circuit.from_edges(graph, edges) if edges else lc.Circuit.from_nodes(graph, nodes) if nodes \
                else stored.found.circuit if stored else None
        except ValueError as e:
            raise ToolError(str(e)) from e
        if given is None:
            raise ToolError("give edges=, nodes= or a circuit handle")
        f = lc.evaluate(m, given, lc.Pair.of(m, ps), row, ablation)[0]
    return CircuitResult(
        model=entry.handle, circuit=circuit or "", json_path=str(stored.path) if stored else "", faithfulness=_faith(f),
        nodes=given.nodes[:80], top_edges=[f"{s}->{r}" for s, r, _ in given.edge_list()[:15]], curve=[],
        interpretation=_said(f, row.name) + f" ({ablation} ablation)" + _dropped(ps))


class InvestigationResult(ToolResult):
    report: str = Field(description="absolute path of the Markdown report; its PNGs sit beside it")
    claims: list[str] = Field(description="the report's summary: each claim with its number and spread")


def investigate(
    ctx: Context,
    task: Annotated[Literal["ioi", "factual", "induction", "greater_than", "agreement"] | None, Field(
        description="a generated set of n rows (default ioi); or dataset= / clean, corrupted, answer")] = None,
    n: Annotated[int, Field(ge=1, le=500)] = 50,
    seed: Annotated[int, Field(ge=0)] = 0,
    clean: Rows | None = None,
    corrupted: Rows | None = None,
    answer: TokenRows | None = None,
    baseline: TokenRows | None = None,
    dataset: DatasetRef = None,
    metric: Annotated[Literal["logit_diff", "logit", "prob", "logprob"], Field(
        description="per row at its last token")] = "logit_diff",
    model: ModelRef = None,
) -> InvestigationResult:
    """One call for the standard battery on a prompt set: does the model do the task, logit lens, DLA by
    head, residual patching at named positions, head patching, and the EAP-IG circuit with its
    faithfulness; writes a Markdown report with plots. Slow on real models (minutes)."""
    import time

    from lens.investigation import investigate as run_battery
    state = state_of(ctx)
    with state.using(model) as entry:
        m = entry.model
        if task is not None or (dataset is None and clean is None):
            if dataset is not None or clean is not None:
                raise ToolError("give task= (a generated set) or the prompts (dataset= or clean/corrupted/answer), "
                                "not both")
            ps = make_dataset(m, task or "ioi", n=n, seed=seed)
        else:
            ps = _prompts(state, entry, dataset, clean, corrupted, answer, baseline)
        folder = state.plots.root / "investigations" / f"{ps.task or 'set'}-{time.strftime('%Y%m%d-%H%M%S')}"
        report = run_battery(m, ps, metric, folder)
    claims = [c if len(c) <= 480 else c[:479] + "…" for c in report.facts["claims"]]
    return InvestigationResult(model=entry.handle, report=str(report.path), claims=claims,
                               interpretation=claims[-1])


TOOLS = [(find_circuit, STORING), (evaluate_circuit, STORING), (investigate, STORING)]
