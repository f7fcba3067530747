"""Circuit discovery (lens.circuits): the edge-patched forward is exact, EAP is the gradient it claims to be,
and circuits, selection and JSON behave as documented. Real-model figures: test_circuits_real.py."""

import pytest
import torch
from conftest import TINY_VARIANTS, max_diff

from lens import HookedTransformer
from lens.circuits import Circuit, Graph, Pair, edge_scores, evaluate, find_circuit, to_faithfulness, top_n
from lens.circuits.forward import sender_outputs
from lens.circuits.patched import run_circuits
from lens.patching.metrics import Metric


def make(variant: str, dtype=torch.float32) -> HookedTransformer:
    """A tiny random model with weights large enough (std 0.15) that single edges move the logits visibly."""
    model = HookedTransformer.from_config(TINY_VARIANTS[variant], dtype=dtype)
    model.weights.init_random(1, std=0.15)
    return model


def logits_metric(seen: list) -> Metric:
    """A metric that keeps the logits it is given ([circuits, batch, pos, d_vocab]) for comparison."""
    return Metric("keep logits", lambda logits: (seen.append(logits.clone()), logits[..., 0, 0])[1], positions=None)


def answer_metric() -> Metric:
    return Metric("logit 3 - logit 5", lambda l: l[..., 3].mean(-1) - l[..., 5].mean(-1), positions=-1)


def random_pair(batch=3, n_pos=7, seed=0) -> Pair:
    g = torch.Generator().manual_seed(seed)
    return Pair(torch.randint(0, 50, (batch, n_pos), generator=g), torch.randint(0, 50, (batch, n_pos), generator=g))


def patched_logits(model, pair: Pair, off: torch.Tensor) -> torch.Tensor:
    graph = Graph.of(model)
    seen = []
    run_circuits(model, graph, pair.clean, pair.mask, sender_outputs(model, graph, pair.corrupted, pair.mask),
                 off, logits_metric(seen))
    return torch.cat(seen)


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_whole_graph_is_the_clean_run_and_empty_circuit_the_corrupted_run(variant):
    model = make(variant)
    graph, pair = Graph.of(model), random_pair()
    off = torch.stack([torch.zeros(graph.n_senders, graph.n_receivers), torch.ones(graph.n_senders, graph.n_receivers)])
    whole, empty = patched_logits(model, pair, off)
    with torch.no_grad():
        clean, corrupted = model(pair.clean), model(pair.corrupted)
    assert (whole - clean).abs().max() <= 1e-5, max_diff(whole, clean)
    assert (empty - corrupted).abs().max() <= 1e-5, max_diff(empty, corrupted)
    assert (clean - corrupted).abs().max() > 1e-2  # the two runs differ, so the test can fail


def test_a_padded_set_keeps_both_ends_exact():
    model = make("llama_like")
    graph, pair = Graph.of(model), random_pair()
    mask = torch.ones_like(pair.clean)
    mask[0, -2:] = 0
    pair = Pair(pair.clean, pair.corrupted, mask)
    off = torch.stack([torch.zeros(graph.n_senders, graph.n_receivers), torch.ones(graph.n_senders, graph.n_receivers)])
    whole, empty = patched_logits(model, pair, off)
    with torch.no_grad():
        clean, corrupted = model(pair.clean, attention_mask=mask), model(pair.corrupted, attention_mask=mask)
    real = mask.bool()
    assert (whole - clean)[real].abs().max() <= 1e-5, max_diff(whole[real], clean[real])
    assert (empty - corrupted)[real].abs().max() <= 1e-5, max_diff(empty[real], corrupted[real])


EDGES = {  # variant → edges to remove one at a time, as (sender hook, index, receiver hook, index)
    "gpt2_like": [("blocks.0.attn.hook_result", 1, "blocks.2.hook_q_input", 3),
                  ("blocks.1.attn.hook_result", 2, "blocks.1.hook_mlp_in", None),
                  ("blocks.0.hook_mlp_out", None, "blocks.2.hook_resid_post", None)],
    "llama_like": [("blocks.0.hook_resid_pre", None, "blocks.1.hook_k_input", 1),
                   ("blocks.0.attn.hook_result", 3, "blocks.2.hook_v_input", 0)],
}


@pytest.mark.parametrize("variant,edge", [(v, e) for v, edges in EDGES.items() for e in edges])
def test_removing_one_edge_equals_adding_the_senders_corrupted_change_to_that_receiver_only(variant, edge):
    model = make(variant)
    graph, pair = Graph.of(model), random_pair()
    sender_hook, s_index, receiver_hook, r_index = edge
    # hand-written: the sender's output in the clean and corrupted runs, added at the receiver
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(pair.clean, names_filter=sender_hook)
        _, corrupted_cache = model.run_with_cache(pair.corrupted, names_filter=sender_hook)
    pick = (lambda a: a) if s_index is None else (lambda a: a[:, :, s_index])
    change = pick(corrupted_cache[sender_hook]) - pick(clean_cache[sender_hook])

    def add(x, point):
        x = x.clone()
        if r_index is None:
            x += change
        else:
            x[:, :, r_index] += change
        return x
    with torch.no_grad():
        expected = model.run_with_hooks(pair.clean, fwd_hooks=[(receiver_hook, add)])
    # the same edge through the graph
    layer = int(sender_hook.split(".")[1]) if sender_hook != "blocks.0.hook_resid_pre" else None
    s = 0 if layer is None else graph.mlp(layer) if s_index is None else graph.head(layer, s_index)
    kind = {"hook_q_input": "q", "hook_k_input": "k", "hook_v_input": "v", "hook_mlp_in": "mlp",
            "hook_resid_post": "logits"}[receiver_hook.split(".")[-1]]
    r = graph.receivers(int(receiver_hook.split(".")[1]), kind)[r_index or 0]
    off = torch.zeros(1, graph.n_senders, graph.n_receivers)
    off[0, s, r] = 1
    got = patched_logits(model, pair, off)[0]
    assert (got - expected).abs().max() <= 1e-5, max_diff(got, expected)
    assert (expected - model(pair.clean)).abs().max() > 1e-4  # the edge matters, so the test can fail


def edge_steps(graph: Graph, n: int, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, float]:
    """n edges sampled (seeded) [n, 2], and circuit weights [2n, S, R] stepping each by +eps and -eps, for a
    central-difference derivative along each edge."""
    edges = graph.valid.nonzero()
    sample = edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(0))[:n]]
    off = torch.zeros(2 * len(sample), graph.n_senders, graph.n_receivers, dtype=torch.float64)
    for i, (s, r) in enumerate(sample.tolist()):
        off[2 * i, s, r], off[2 * i + 1, s, r] = eps, -eps
    return sample, off, eps


@pytest.mark.parametrize("variant", ["gpt2_like", "llama_like", "parallel", "olmo2_like", "gemma_like"])
def test_eap_scores_are_the_fp64_directional_derivative_along_each_edge(variant):
    model = make(variant, torch.float64)
    graph, pair, metric = Graph.of(model), random_pair(4), answer_metric()
    eap = edge_scores(model, pair, metric, "eap").scores
    sample, off, eps = edge_steps(graph, 10)
    reference = sender_outputs(model, graph, pair.corrupted, None)
    values = run_circuits(model, graph, pair.clean, None, reference, off, metric).mean(1)
    derivative = (values[0::2] - values[1::2]) / (2 * eps)
    got = eap[sample[:, 0], sample[:, 1]]
    assert (got - derivative).abs().max() <= 1e-7 + 1e-5 * derivative.abs().max(), max_diff(got, derivative)
    assert derivative.abs().max() > 1e-4


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.parametrize("std,at_least", [(0.02, 0.98), (0.15, 0.7)])
def test_eap_ig_with_many_steps_tracks_exact_edge_patching_better_than_eap(std, at_least):
    """Measured (llama_like, 4 prompts, every edge): weights of std 0.02 (near-linear): corr(exact, EAP)
    0.942, corr(exact, EAP-IG 50 steps) 0.985; std 0.15 (strongly non-linear): 0.566 and 0.734."""
    model = HookedTransformer.from_config(TINY_VARIANTS["llama_like"], dtype=torch.float64)
    model.weights.init_random(1, std=std)
    graph, pair, metric = Graph.of(model), random_pair(4, seed=0), answer_metric()
    exact = edge_scores(model, pair, metric, "exact").scores[graph.valid]
    eap = edge_scores(model, pair, metric, "eap").scores[graph.valid]
    ig = edge_scores(model, pair, metric, "eap-ig", steps=50).scores[graph.valid]
    print(f"std {std}: corr(exact, eap) {correlation(exact, eap):.4f}, "
          f"corr(exact, eap-ig 50) {correlation(exact, ig):.4f}")
    assert correlation(exact, ig) >= at_least
    assert correlation(exact, ig) > correlation(exact, eap)


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_a_node_list_circuit_equals_patching_every_other_nodes_output_with_its_corrupted_value(variant):
    """On every family, post-norms (gemma_like: sandwich norms; olmo2_like: post-norms only and one q/k norm
    over all heads) included: the heads of a layer split between the circuit and the rest still equal
    plain node patching of hook_result, because the engine applies each layer's post-norm to the mix."""
    model = make(variant)
    graph, pair = Graph.of(model), random_pair()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    nodes = ["L0H1", "L1H0", "L1H3", "L1.mlp", "L2H2"]  # every layer's heads split
    heads = {layer: [h for h in range(H) if f"L{layer}H{h}" not in nodes] for layer in range(L)}
    mlps = [layer for layer in range(L) if f"L{layer}.mlp" not in nodes]
    names = [f"blocks.{layer}.attn.hook_result" for layer in range(L)] + [f"blocks.{layer}.hook_mlp_out" for layer in range(L)]
    with torch.no_grad():
        _, corrupted = model.run_with_cache(pair.corrupted, names_filter=names)

    def patch_heads(x, point):
        x = x.clone()
        out = heads[point.layer()]
        x[:, :, out] = corrupted[point.name][:, :, out]
        return x
    hooks = [(f"blocks.{layer}.attn.hook_result", patch_heads) for layer in range(L)]
    hooks += [(f"blocks.{layer}.hook_mlp_out", lambda x, point: corrupted[point.name]) for layer in mlps]
    with torch.no_grad():
        expected = model.run_with_hooks(pair.clean, fwd_hooks=hooks)
        clean = model(pair.clean)
    off = (~Circuit.from_nodes(graph, nodes).edges).float()[None]
    got = patched_logits(model, pair, off)[0]
    assert (got - expected).abs().max() <= 1e-5, max_diff(got, expected)
    assert (expected - clean).abs().max() > 1e-2  # the patch matters, so the test can fail


def test_under_a_joint_qk_norm_a_query_input_feeds_every_head_of_its_layer():
    """OLMo-2 normalises all heads' queries (and keys) together, so an edge into one head's query input
    moves every head of the layer: the graph says so, and a circuit keeps those edges alive."""
    graph = Graph.of(make("olmo2_like"))  # 4 heads, 2 kv heads, joint q/k norm
    assert graph.joint_qk and not Graph.of(make("gemma_like")).joint_qk
    q, k, v = (graph.receivers(1, kind) for kind in ("q", "k", "v"))
    every = [graph.head(1, h) for h in range(4)]
    assert graph.receiver_nodes[q[3]] == every and graph.receiver_nodes[k[0]] == every
    assert graph.receiver_nodes[v[1]] == every[2:]  # values are not normed: a kv group's heads
    loaded = Circuit.from_dict(Circuit.from_nodes(graph, ["L1H0"]).to_dict())
    assert loaded.graph == graph and loaded.nodes == ["input", "L1H0", "logits"]


def test_graph_counts_edges_and_names_kv_receivers_per_kv_head():
    model = make("llama_like")  # 3 layers, 4 heads, 2 kv heads
    graph = Graph.of(model)
    assert graph.n_senders == 1 + 3 * 5 and graph.n_receivers == 3 * (4 + 2 + 2 + 1) + 1
    # q/k/v of layer l read 1 + 5 l senders, the MLP 1 + 5 l + 4 (sequential), the logits all 16
    expected = sum((4 + 2 + 2) * (1 + 5 * l) + (1 + 5 * l + 4) for l in range(3)) + 16
    assert graph.n_edges == expected
    assert graph.receiver_names[4:8] == ["L0KV0.k", "L0KV1.k", "L0KV0.v", "L0KV1.v"]
    assert graph.edge_index("L0H1->L1KV1.v") == (graph.head(0, 1), graph.receivers(1, "v")[1])
    with pytest.raises(ValueError, match="does not come before"):
        graph.edge_index("L1H1->L0H2.q")
    parallel = Graph.of(make("parallel"))
    assert not parallel.valid[parallel.head(1, 0), parallel.receivers(1, "mlp")[0]]
    assert graph.valid[graph.head(1, 0), graph.receivers(1, "mlp")[0]]


def test_pruning_drops_edges_off_every_input_to_logits_path():
    graph = Graph(n_layers=2, n_heads=2, n_kv_heads=2, parallel=False)
    edges = ["input->L0H0.q", "L0H0->logits",  # a path
             "L0H1->L1H0.q",  # L0H1 is not reached from the input
             "input->L1H1.k"]  # L1H1 reaches nothing
    pruned = graph.prune(graph.edge_mask(edges))
    kept = {graph.edge_name(s, r) for s, r in pruned.nonzero().tolist()}
    assert kept == {"input->L0H0.q", "L0H0->logits"}


def test_circuit_json_round_trip_and_faithfulness_ends():
    model = make("gpt2_like")
    pair, metric = random_pair(6), answer_metric()
    found = find_circuit(model, pair, metric=metric, method="eap", edges=30, curve_sizes=[1, 10, 100])
    assert 0 < found.circuit.n_edges <= 30
    loaded = Circuit.from_dict(found.circuit.to_dict())
    assert torch.equal(loaded.edges, found.circuit.edges) and loaded.nodes == found.circuit.nodes
    graph = found.circuit.graph
    whole, empty, again = evaluate(model, [graph.valid, torch.zeros_like(graph.valid), loaded], pair, metric)
    assert abs(whole.value - 1) <= 1e-5 and abs(empty.value) <= 1e-5, (whole, empty)
    # the same circuit's metric; find_circuit reads the clean prompts' metric from EAP's own (hooked) forward,
    # evaluate from a plain one, and the circuit shares its forwards with others: fp32 rounding apart
    assert abs(again.circuit_value - found.faithfulness.circuit_value) <= 1e-5
    assert abs(again.clean_value - found.faithfulness.clean_value) <= 1e-5
    assert abs(again.value - found.faithfulness.value) <= 1e-5 * abs(again.value)
    assert found.faithfulness.low <= found.faithfulness.value <= found.faithfulness.high
    assert [n for n, *_ in found.curve.points()] == [c.n_edges for c in found.curve.circuits]


def test_mean_ablation_of_everything_is_the_baseline_and_the_whole_graph_scores_one():
    model = make("gpt2_like")
    pair, metric = random_pair(6), answer_metric()
    graph = Graph.of(model)
    whole, half = evaluate(model, [graph.valid, top_n(edge_scores(model, pair, metric, "eap"), 40)], pair, metric,
                           ablation="mean")
    assert abs(whole.value - 1) <= 1e-5
    assert whole.empty_value != pytest.approx(pair.values(model, metric)[1])  # the mean run, not the corrupted


def test_bad_requests_fail_before_any_compute():
    model = make("gpt2_like")
    pair, metric = random_pair(), answer_metric()
    with pytest.raises(ValueError, match="method must be"):
        edge_scores(model, pair, metric, "acdc")
    with pytest.raises(ValueError, match="one of edges="):
        find_circuit(model, pair, metric=metric, edges=10, faithfulness=0.8)
    with pytest.raises(ValueError, match="no node 'L9H0'"):
        Circuit.from_nodes(Graph.of(model), ["L9H0"])


def test_a_target_faithfulness_gives_the_smallest_top_n_circuit_reaching_it():
    model = make("gpt2_like")
    pair, metric = random_pair(6), answer_metric()
    scores = edge_scores(model, pair, metric, "eap-ig")
    circuit, value, found = to_faithfulness(model, scores, pair, metric, 0.7, refine=12)
    assert value.value >= 0.7 and value.n_edges == circuit.n_edges
    n = int(circuit.meta["selection"].split("n = ")[1].rstrip(")"))
    below = evaluate(model, top_n(scores, n - 1), pair, metric)[0]
    assert below.value < 0.7, (n, below)  # one edge fewer falls short
    assert len(found.points()) == 10 and found.points()[-1][1] == pytest.approx(1.0, abs=1e-5)


def count_forwards(model) -> list:
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_eap_refuses_sender_buffers_over_the_guards_limit_before_any_forward(method):
    from lens.errors import MemoryBudgetError
    from lens.guard import Guard, guarded
    model = make("llama_like")
    pair, metric = random_pair(4), answer_metric()
    forwards = count_forwards(model)
    with guarded(Guard(max_bytes=4096)), pytest.raises(MemoryBudgetError) as refused:
        edge_scores(model, pair, metric, method)
    said = str(refused.value)
    assert not forwards, f"{len(forwards)} forwards ran before the refusal"
    assert f"{method.upper()}'s sender differences" in said and "MiB" in said and "shorter prompts" in said, said


def test_eap_under_a_moderate_limit_runs_in_chunks_and_equals_the_unchunked_scores():
    from lens.circuits.scores import _buffer_bytes, _pass_bytes
    from lens.guard import Guard, guarded
    model = make("llama_like", torch.float64)
    graph, pair, metric = Graph.of(model), random_pair(6), answer_metric()
    whole = edge_scores(model, pair, metric, "eap-ig", steps=3)
    two_rows = _buffer_bytes(model, graph, 2, 7, "eap-ig") + _pass_bytes(model, graph, 2, 7, 3)
    forwards = count_forwards(model)
    with guarded(Guard(max_bytes=two_rows)):
        chunked = edge_scores(model, pair, metric, "eap-ig", steps=3)
    # 2 forwards per chunk (the corrupted and the clean prompts together, the gradient pass); the metric's
    # clean and corrupted values come from the first, chunk by chunk, and equal separate runs of the whole set
    assert len(forwards) == 3 * 2, len(forwards)
    clean, corrupted = pair.values(model, metric)
    with guarded(Guard(max_bytes=two_rows)):
        eap = edge_scores(model, pair, metric, "eap")
    for found in (whole, chunked, eap):
        assert abs(found.clean_value - clean) <= 1e-10 and abs(found.corrupted_value - corrupted) <= 1e-10
    assert (chunked.scores - whole.scores).abs().max() <= 1e-10, max_diff(chunked.scores, whole.scores)
