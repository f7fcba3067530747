"""Every MCP tool through a real in-process mcp.Client, on a tiny random model, checked against the lens call it wraps."""

import json
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
         "logit_attribution", "logit_lens", "attention_pattern", "find_induction_heads", "detect_heads", "patch",
         "attribution_patch", "path_patch", "ablate", "steer", "generate", "find_circuit", "evaluate_circuit",
         "investigate", "features"}
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
        assert len(t.description) > 150, f"{t.name}: the docstring should tell an agent when to use it"
        assert "interpretation" in t.output_schema["properties"] or t.name in ("list_models", "release"), t.name
        assert t.annotations.read_only_hint == (t.name in READ_ONLY), t.name
        assert bool(t.annotations.destructive_hint) == (t.name == "release"), t.name
        assert t.input_schema["type"] == "object"
    schema = next(t for t in tools if t.name == "generate").input_schema["properties"]["max_new_tokens"]
    assert schema["minimum"] == 1 and schema["maximum"] == 512, schema


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
    assert [layer["layer"] for layer in result["layers"]] == ["embed", "L0", "L1", "L2"]
    for got, want in zip(result["layers"], expected.layers, strict=True):
        assert got["top"] == [t for t, _ in want.top] and got["target_ranks"] == [want.targets[0].rank]
        assert close(got["target_probs"][0], want.targets[0].prob)
    assert result["plot"] is None


def test_attention_pattern_reports_where_each_query_attends_most(server, model):
    result = run(server, lambda c: ok(c, "attention_pattern", {"prompt": IOI_CLEAN, "heads": ["L1H2", "l0h3"]}))
    expected = attention_patterns(model, IOI_CLEAN, [(1, 2), (0, 3)])
    for got, want in zip(result["heads"], expected.heads, strict=True):
        assert got["attends_to"] == [k for _, k, _ in want.strongest]
        assert all(close(a, w) for a, (_, _, w) in zip(got["weights"], want.strongest, strict=True))
    assert [h["head"] for h in result["heads"]] == ["L1H2", "L0H3"] and result["plot"]["path"].endswith(".png")


def test_head_finders_rank_heads_as_lens_does(server, model):
    async def scenario(client):
        induction = await ok(client, "find_induction_heads", {"seq_len": 12, "batch": 2, "top_k": 3, "plot": False})
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


def test_answers_stay_under_4_kb_by_default_even_for_a_long_prompt(server):
    long_prompt = " ".join([IOI_CLEAN] * 3)  # ~48 tokens
    calls = [("list_models", {}), ("load_model", {}), ("model_info", {}), ("tokenize", {"text": long_prompt}),
             ("run_with_cache", {"prompt": long_prompt}), ("logit_lens", {"prompt": long_prompt, "targets": [" Mary"]}),
             ("logit_attribution", {"prompt": long_prompt, "answer": " Mary", "by": "neuron"}),
             ("attention_pattern", {"prompt": long_prompt, "heads": ["L0H0", "L1H1", "L2H2", "L2H3"]}),
             ("find_induction_heads", {}), ("detect_heads", {}),
             ("patch", {"clean": long_prompt, "corrupted": long_prompt, "answer": " Mary", "what": "heads_by_pos"}),
             ("ablate", {"prompt": long_prompt, "answer": " Mary", "what": "neurons"}),
             ("steer", {"prompt": long_prompt, "positive": ["Mary"], "negative": ["John"]}),
             ("generate", {"prompt": long_prompt, "max_new_tokens": 16})]

    async def scenario(client):
        sizes = {}
        for name, args in calls:
            result = await client.call_tool(name, args | ({"plot": False} if name in PLOTTING else {}))
            assert not result.is_error, f"{name}: {result.content[0].text}"
            sizes[name] = len(json.dumps(result.structured_content))
            assert len(result.content[0].text) <= sizes[name] + 10, "the text is the same JSON, not indented"
        return sizes
    sizes = run(server, scenario)
    assert max(sizes.values()) < 4096, sizes


PLOTTING = {"logit_attribution", "logit_lens", "attention_pattern", "find_induction_heads", "detect_heads", "patch",
            "attribution_patch", "path_patch", "ablate"}


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
