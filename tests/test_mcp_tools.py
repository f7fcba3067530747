"""Every MCP tool through a real in-process mcp.Client, on a tiny random model, checked against the lens call it wraps."""

from pathlib import Path

import anyio
import pytest
import torch
from test_mcp_support import (
    IOI,
    IOI_CLEAN,
    IOI_CORRUPTED,
    close,
    ok,
    run,
    tiny_model,
    tiny_server,
)

from lens import patching
from lens.analysis import (
    attention_patterns,
    detect_heads,
    direct_logit_attribution,
    induction_loss,
    logit_lens,
    steer,
    steering_vector,
)
from mcp_server import Settings, create_server

TOOLS = {"list_models", "load_model", "model_info", "tokenize", "release", "run_with_cache", "get_activation",
         "logit_attribution", "logit_lens", "attention_pattern", "detect_heads", "dataset", "patch",
         "attribution_patch", "path_patch", "ablate", "steer", "generate", "features", "find_circuit", "evaluate_circuit",
         "investigate"}
READ_ONLY = {"list_models", "model_info", "tokenize", "get_activation", "generate"}


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture
def server(model, tmp_path):
    return tiny_server(model, tmp_path)


def is_png_in(plot: dict, folder: Path) -> bool:
    path = Path(plot["path"])
    return path.is_absolute() and path.is_relative_to(folder.resolve()) and path.read_bytes()[:4] == b"\x89PNG"


def test_every_tool_has_a_description_input_constraints_an_output_schema_and_annotations(server):
    tools = run(server, lambda client: client.list_tools()).tools
    assert {t.name for t in tools} == TOOLS
    for t in tools:
        assert "interpretation" in t.output_schema["properties"] or t.name in ("list_models", "release"), t.name
        assert t.annotations.read_only_hint == (t.name in READ_ONLY), t.name
        assert bool(t.annotations.destructive_hint) == (t.name == "release"), t.name
        assert t.input_schema["type"] == "object"
    schema = next(t for t in tools if t.name == "generate").input_schema["properties"]["temperature"]
    assert schema["maximum"] == 10 and schema["default"] == 1.0, schema  # a bound that informs is published


def test_the_default_model_loads_on_first_use_and_load_model_makes_a_model_current(server, model):
    async def scenario(client):
        before = await ok(client, "list_models", {})
        info = await ok(client, "model_info", {})  # names no model: the default loads
        after = await ok(client, "list_models", {})
        loaded = await ok(client, "load_model", {"name": "tiny"})
        return before, info, after, loaded
    before, info, after, loaded = run(server, scenario)
    assert before["loaded"] == [] and [m["handle"] for m in after["loaded"]] == ["tiny"]
    assert info["n_layers"] == model.cfg.n_layers and info["d_vocab"] == model.cfg.d_vocab
    assert "blocks.{i}.attn.hook_z" in info["hook_points"]
    assert loaded["model"] == "tiny" and "already loaded" in loaded["interpretation"]


def test_a_model_folder_loads_by_path_under_its_path_handle(tmp_path):
    from test_mcp_support import save_tiny_folder
    folder = save_tiny_folder(tmp_path / "tiny-llama")
    server = create_server(Settings(out_dir=tmp_path / "plots", default_model=str(folder)))

    async def scenario(client):
        loaded = await ok(client, "load_model", {"name": str(folder)})
        tokens = await ok(client, "tokenize", {"text": IOI_CLEAN})
        return loaded, tokens
    loaded, tokens = run(server, scenario)
    assert loaded["model"] == str(folder) and loaded["n_layers"] == 2 and loaded["family"] == "llama"
    assert tokens["tokens"]["str_tokens"][:2] == ["When", " Mary"]


def test_tokenize_gives_positions_and_flags_multi_token_answers(server, model):
    result = run(server, lambda c: ok(c, "tokenize", {"text": IOI_CLEAN, "answers": [" Mary", " Paris"]}))
    assert result["tokens"]["str_tokens"] == model.to_str_tokens(IOI_CLEAN)
    assert result["ids"] == model.to_tokens(IOI_CLEAN)[0].tolist()
    mary, paris = result["answers"]
    assert mary["single_token"] and not paris["single_token"]
    assert "".join(paris["pieces"]) == " Paris" and len(paris["pieces"]) > 1
    assert "' Paris'" in result["interpretation"]


def test_run_with_cache_keeps_activations_that_get_activation_reads(server, model):
    async def scenario(client):
        summary = await ok(client, "run_with_cache", {"prompt": IOI_CLEAN, "top_k": 3})
        z = await ok(client, "get_activation", {"cache": summary["cache"], "hook": "z", "layer": 1, "pos": -1})
        head = await ok(client, "get_activation", {"cache": summary["cache"], "hook": "blocks.2.attn.hook_pattern",
                                                   "head": 1, "pos": 4})
        return summary, z, head
    summary, z, head = run(server, scenario)
    logits, cache = model.run_with_cache(IOI_CLEAN)
    probs = logits[0, -1].softmax(-1)
    assert [t["id"] for t in summary["top_next"]] == probs.topk(3).indices.tolist()
    assert close(summary["top_next"][0]["prob"], probs.max().item())
    norms = [cache["resid_post", i][0, -1].norm().item() for i in range(model.cfg.n_layers)]
    assert all(close(a, b) for a, b in zip(summary["resid_norms"], norms, strict=True)), (summary["resid_norms"], norms)
    assert summary["n_activations"] == len(cache) and close(summary["size_mib"], cache.nbytes / 2**20)
    expected = cache["z", 1][0, -1]  # [head, d_head]
    assert z["shape"] == list(cache["z", 1].shape) and z["axes"] == ["head", "d_head"]
    assert close(z["norm"], expected.norm().item())
    assert torch.allclose(torch.tensor(z["values"]), expected, atol=1e-5)
    best_head = expected.norm(dim=-1).argmax().item()
    assert z["head_norms"][0]["head"] == best_head
    pattern = cache["pattern", 2][0, 1, 4]  # [key_pos]
    assert head["axes"] == ["key_pos"] and head["top"][0]["index"] == [pattern.argmax().item()]


def test_logit_attribution_matches_direct_logit_attribution_and_writes_a_heatmap(server, model, tmp_path):
    async def scenario(client):
        result = await ok(client, "logit_attribution", {"prompt": IOI_CLEAN, "answer": " Mary", "baseline": " John",
                                                        "by": "head", "top_k": 5})
        png = await client.read_resource(result["plot"]["uri"])
        return result, png
    result, png = run(server, scenario)
    expected = direct_logit_attribution(model, IOI_CLEAN, " Mary", " John", by="head", top_k=5)
    assert close(result["total"], expected.total) and close(result["rest"], expected.rest)
    assert [c["component"] for c in result["contributions"]] == [c for c, _ in expected.contributions]
    assert all(close(c["value"], v) for c, (_, v) in zip(result["contributions"], expected.contributions, strict=True))
    assert is_png_in(result["plot"], tmp_path / "plots")
    assert png.contents[0].mime_type == "image/png" and len(png.contents[0].blob) > 1000


def test_logit_lens_matches_lens(server, model):
    result = run(server, lambda c: ok(c, "logit_lens", {"prompt": IOI_CLEAN, "targets": [" Mary"], "top_k": 2,
                                                       "plot": False}))
    expected = logit_lens(model, IOI_CLEAN, targets=[" Mary"], top_k=2)
    assert result["layers"] == ["embed", "L0", "L1", "L2"] and result["targets"] == [" Mary"]
    assert result["top"] == [[t for t, _ in want.top] for want in expected.layers]
    assert result["ranks"] == [[want.targets[0].rank for want in expected.layers]]
    assert all(close(got, want.targets[0].prob) for got, want in zip(result["probs"][0], expected.layers, strict=True))
    assert result["plot"] is None


def test_attention_pattern_reports_each_querys_top_keys_without_the_sink(server, model):
    async def scenario(client):
        return (await ok(client, "attention_pattern", {"prompt": IOI_CLEAN, "heads": ["L1H2", "l0h3"], "top_k": 3}),
                await ok(client, "attention_pattern", {"prompt": IOI_CLEAN, "heads": ["L1H2"], "skip_first": False,
                                                       "top_k": 1, "plot": False}))
    result, with_sink = run(server, scenario)
    expected = attention_patterns(model, IOI_CLEAN, [(1, 2), (0, 3)])
    n = len(expected.str_tokens)
    for got, want in zip(result["heads"], expected.heads, strict=True):
        pattern = torch.tensor(want.pattern)  # [q, k]
        assert got["keys"][0] == [0] and len(got["keys"]) == n  # query 0 sees only key 0
        for q in range(1, n):
            keys = pattern[q, 1:q + 1].argsort(descending=True)[:3] + 1  # the sink (key 0) left out
            assert got["keys"][q] == keys.tolist(), (q, got["keys"][q], keys)
            assert all(close(w, pattern[q, k].item()) for w, k in zip(got["weights"][q], keys.tolist(), strict=True))
            assert close(got["first"][q], pattern[q, 0].item())
    assert [h["head"] for h in result["heads"]] == ["L1H2", "L0H3"] and result["plot"]["path"].endswith(".png")
    assert with_sink["heads"][0]["keys"] == [[k] for _, k, _ in expected.heads[0].strongest]


def test_head_finders_rank_heads_as_lens_does(server, model):
    async def scenario(client):
        induction = await ok(client, "detect_heads", {"seq_len": 12, "batch": 2, "top_k": 3, "plot": False})
        previous = await ok(client, "detect_heads", {"kind": "previous_token", "top_k": 3, "plot": False})
        return induction, previous
    induction, previous = run(server, scenario)
    scores = detect_heads(model, "induction", seq_len=12, batch=2)
    assert [h["head"] for h in induction["top"]] == [f"L{l}H{h}" for l, h, _ in scores.top[:3]]
    loss = induction_loss(model, seq_len=12, batch=2)
    assert close(induction["loss_first_copy"], loss.first_half) and close(induction["loss_second_copy"], loss.second_half)
    assert len(induction["loss_curve"]) == 10
    expected = detect_heads(model, "previous_token")
    assert [h["head"] for h in previous["top"]] == [f"L{l}H{h}" for l, h, _ in expected.top[:3]]


def test_generate_is_greedy_by_default_and_returns_only_the_continuation(server, model):
    result = run(server, lambda c: ok(c, "generate", {"prompt": IOI_CLEAN, "max_new_tokens": 6}))
    full = model.generate(IOI_CLEAN, max_new_tokens=6, do_sample=False, verbose=False, return_type="tokens")
    n = model.to_tokens(IOI_CLEAN).shape[1]
    assert result["completion"] == model.tokenizer.decode(full[0, n:].tolist(), skip_special_tokens=True)
    assert result["n_new_tokens"] == 6 and result["stopped_by"] == "max_new_tokens"


def test_patch_matches_lens_and_reports_progress(server, model):
    progress = []

    async def record(done, total, message):
        progress.append((done, total))

    result = run(server, lambda c: ok(c, "patch", IOI | {"what": "resid_pre", "top_k": 4}, progress_callback=record))
    metric = patching.logit_diff(model, " Mary", " John")
    expected = patching.patch(model, IOI_CLEAN, IOI_CORRUPTED, metric, what="resid_pre", top_k=4, progress=False)
    assert close(result["clean_value"], expected.clean_value) and close(result["corrupted_value"], expected.corrupted_value)
    assert [h["label"] for h in result["hotspots"]] == [h.label for h in expected.top]
    assert all(close(h["normalised"], e.normalised) for h, e in zip(result["hotspots"], expected.top, strict=True))
    assert result["shape"] == [model.cfg.n_layers, len(model.to_str_tokens(IOI_CLEAN))]
    assert "restores" in result["interpretation"] and result["plot"]["path"].endswith(".png")
    assert progress and progress[-1][0] == progress[-1][1], progress
    assert [p for p, _ in progress] == sorted(p for p, _ in progress), "progress never goes back"


def test_attribution_path_patching_and_ablation_match_lens(server, model):
    async def scenario(client):
        attribution = await ok(client, "attribution_patch", IOI | {"what": "heads", "plot": False})
        path = await ok(client, "path_patch", IOI | {"receivers": ["L2H1.q"], "top_k": 3, "plot": False})
        ablation = await ok(client, "ablate", {"prompt": IOI_CLEAN, "answer": " Mary", "baseline": " John",
                                               "what": "heads", "top_k": 3})
        together = await ok(client, "ablate", {"prompt": IOI_CLEAN, "answer": " Mary", "components": ["L0H1", "L1.mlp"],
                                               "together": True})
        return attribution, path, ablation, together
    attribution, path, ablation, together = run(server, scenario)
    metric = patching.logit_diff(model, " Mary", " John")
    want = patching.attribution_patch(model, IOI_CLEAN, IOI_CORRUPTED, metric, what="heads")
    assert [h["label"] for h in attribution["hotspots"]] == [h.label for h in want.top]
    assert all(close(h["score"], e.score) for h, e in zip(attribution["hotspots"], want.top, strict=True))
    want = patching.path_patch(model, IOI_CLEAN, IOI_CORRUPTED, metric, ["L2H1.q"], top_k=3, progress=False)
    assert all(close(h["score"], e.score) for h, e in zip(path["hotspots"], want.top, strict=True))
    want = patching.ablate(model, IOI_CLEAN, metric, what="heads", top_k=3, progress=False)
    assert [h["label"] for h in ablation["hotspots"]] == [h.label for h in want.top]
    assert close(ablation["unablated_value"], want.baseline) and ablation["plot"] is not None
    answer_logit = patching.logit_diff(model, " Mary")
    want = patching.ablate(model, IOI_CLEAN, answer_logit, components=["L0H1", "L1.mlp"], together=True, progress=False)
    assert close(together["hotspots"][0]["score"], float(want.scores)) and together["plot"] is None


def test_steer_builds_a_vector_stores_it_and_reuses_it(server, model):
    async def scenario(client):
        built = await ok(client, "steer", {"prompt": "The cat", "positive": ["Mary gave"], "negative": ["John went"],
                                           "layer": 1, "coefficients": [0, 6], "tokens": [" Mary"],
                                           "max_new_tokens": 5})
        reused = await ok(client, "steer", {"prompt": "The cat", "vector": built["vector"], "coefficients": [6],
                                            "max_new_tokens": 5})
        return built, reused
    built, reused = run(server, scenario)
    vector = steering_vector(model, ["Mary gave"], ["John went"], 1)
    want = steer(model, "The cat", vector, 1, coefficients=[0, 6], max_new_tokens=5, tokens=[" Mary"])
    assert close(built["vector_norm"], vector.norm().item())
    assert [g["text"] for g in built["generations"]] == [g.text for g in want.generations]
    assert close(built["generations"][1]["logit_shifts"][0]["shift"], want.generations[1].logit_shifts[" Mary"])
    assert built["generations"][0]["logit_shifts"][0]["shift"] == 0
    assert reused["generations"][0]["text"] == built["generations"][1]["text"]




def test_calls_on_one_model_run_one_at_a_time(server, model):
    running, most = 0, 0

    def enter(x, hook):
        nonlocal running, most
        running += 1
        most = max(most, running)

    def leave(x, hook):
        nonlocal running
        running -= 1
    model.add_hook("hook_embed", enter)
    model.add_hook(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", leave)

    async def scenario(client):
        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(ok, client, "logit_lens", {"prompt": IOI_CLEAN, "plot": False})
                group.start_soon(ok, client, "generate", {"prompt": IOI_CLEAN, "max_new_tokens": 3})
    try:
        run(server, scenario)
    finally:
        model.reset_hooks()
    assert most == 1, f"{most} forwards of one model overlapped"


def test_answers_lead_with_the_finding(server, model):
    """best position per layer, both tokens where the prompts differ, the loss metric, spacing warnings,
    and steer's metric shift for every coefficient."""
    logits = model(IOI_CLEAN)[0, -1]
    vocab = [model.tokenizer.decode([i]) for i in range(model.cfg.d_vocab)]
    pairs = [w for w in vocab if w.isalpha() and " " + w in vocab]  # both forms single tokens
    ranked = {w: (int((logits > logits[vocab.index(" " + w)]).sum()), int((logits > logits[vocab.index(w)]).sum()))
              for w in pairs}
    flagged = next(w for w, (spaced, plain) in ranked.items() if spaced < plain)
    quiet = next(w for w, (spaced, plain) in ranked.items() if spaced > plain)

    async def scenario(client):
        return (await ok(client, "patch", IOI | {"plot": False}),
                await ok(client, "ablate", {"prompt": IOI_CLEAN, "metric": "loss", "span": [2, 9], "top_k": 3,
                                            "plot": False}),
                await ok(client, "logit_attribution", {"prompt": IOI_CLEAN, "answer": flagged, "plot": False}),
                await ok(client, "logit_attribution", {"prompt": IOI_CLEAN, "answer": quiet, "plot": False}),
                await ok(client, "steer", {"prompt": "The cat", "positive": ["Mary gave"], "negative": ["John went"],
                                           "layer": 1, "coefficients": [0, 3, 6], "answer": " Mary",
                                           "baseline": " John", "tokens": [" Mary", " John"], "max_new_tokens": 3}))
    patched, ablated, warned, unwarned, steered = run(server, scenario)
    want = patching.patch(model, IOI_CLEAN, IOI_CORRUPTED, patching.logit_diff(model, " Mary", " John"), progress=False)
    normalised = torch.tensor(want.normalised)  # [layer, pos]
    assert patched["best_pos"] == normalised.argmax(-1).tolist()
    s2 = next(i for i, (a, b) in enumerate(zip(model.to_str_tokens(IOI_CLEAN), model.to_str_tokens(IOI_CORRUPTED),
                                                  strict=True)) if a != b)
    labels = [h["label"] for h in patched["hotspots"] if h["index"][1] == s2]
    assert labels and all(label.endswith(" ' John'/' Mary'") for label in labels), labels
    loss = patching.next_token_loss(model, IOI_CLEAN, list(range(2, 10)))
    expected = patching.ablate(model, IOI_CLEAN, loss, top_k=3, progress=False)
    assert close(ablated["unablated_value"], expected.baseline) and ablated["metric"] == str(loss)
    per_token = model(IOI_CLEAN, return_type="loss", loss_per_token=True)[0, 2:10].mean().item()
    assert close(ablated["unablated_value"], per_token), (ablated["unablated_value"], per_token)
    assert [h["label"] for h in ablated["hotspots"]] == [h.label for h in expected.top]
    assert warned["warnings"] and f"' {flagged}'" in warned["warnings"][0] and "WARNING" in warned["interpretation"]
    assert unwarned["warnings"] is None
    for g in steered["generations"]:
        mary, john = (s["shift"] for s in g["logit_shifts"])
        assert close(g["metric_shift"], mary - john, rel=1e-3), g
        assert f"x{g['coefficient']:g}:" in steered["interpretation"]
