"""Agent mistakes come back as tool errors that say what was wrong and what is valid; memory budgets evict LRU."""

import logging

import pytest
from test_mcp_support import (
    IOI,
    IOI_CLEAN,
    ok,
    refused,
    run,
    tiny_model,
    tiny_server,
)

from mcp_server import Settings, create_server
from mcp_server.activations import estimate_bytes
from mcp_server.state import model_bytes


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5)


@pytest.fixture
def server(model, tmp_path):
    return tiny_server(model, tmp_path)


MISTAKES = {
    "unknown model": ("load_model", {"name": "gpt-17"}, ["'gpt-17'", "smollm2-135m"]),
    "unknown model handle": ("tokenize", {"text": "hi", "model": "tinny"}, ["no model 'tinny'", "did you mean", "tiny"]),
    "unknown cache handle": ("get_activation", {"cache": "c99", "hook": "z", "layer": 0}, ["no cache 'c99'"]),
    "unknown hook": ("run_with_cache", {"prompt": IOI_CLEAN, "hooks": ["blocks.1.attn.hook_zz"]},
                     ["Nearest valid names", "blocks.1.attn.hook_z"]),
    "unknown short hook": ("run_with_cache", {"prompt": IOI_CLEAN, "hooks": ["resid_pots"]}, ["hook_resid_post"]),
    "head out of range": ("attention_pattern", {"prompt": IOI_CLEAN, "heads": ["L1H9"]}, ["head 9", "0..3"]),
    "badly written head": ("attention_pattern", {"prompt": IOI_CLEAN, "heads": ["head 3"]}, ["heads", "L"]),
    "layer out of range": ("patch", IOI | {"layers": [5]}, ["layer 5", "0..2"]),
    "cache layer out of range": ("get_activation", {"cache": "c1", "hook": "z", "layer": 3}, ["layer 3", "0..2"]),
    "position out of range": ("patch", IOI | {"positions": [40]}, ["position 40", "16 tokens"]),
    "multi-token answer": ("logit_attribution", {"prompt": IOI_CLEAN, "answer": " Paris"},
                           ["' Paris' is 4 tokens", "[' ', 'P', 'ar', 'is']"]),
    "different token lengths": ("patch", IOI | {"corrupted": "When Mary went to the store"},
                                ["16 tokens", "6", "'When', ' Mary', ' went'"]),
    "prompt past the context": ("run_with_cache", {"prompt": "Mary " * 300}, ["context window is 256", "Shorten"]),
    "generation past the context": ("generate", {"prompt": "Mary " * 250, "max_new_tokens": 10}, ["max_new_tokens <=", "context window of 256"]),
    "plot path outside the folder": ("logit_lens", {"prompt": IOI_CLEAN, "plot_path": "/etc/lens.png"},
                                     ["outside the output folder"]),
    "plot path escaping the folder": ("logit_lens", {"prompt": IOI_CLEAN, "plot_path": "../../x"},
                                      ["outside the output folder"]),
    "argument out of bounds": ("generate", {"prompt": "hi", "max_new_tokens": 100_000}, ["max_new_tokens", "512"]),
    "argument of the wrong type": ("patch", IOI | {"layers": "all"}, ["layers"]),
    "unknown enum value": ("patch", IOI | {"what": "neurons"}, ["what", "resid_pre"]),
    "a head has no head axis": ("get_activation", {"cache": "c1", "hook": "resid_post", "layer": 0, "head": 1},
                                ["no head axis", "['pos', 'd_model']"]),
    "stored vector missing": ("steer", {"prompt": "hi", "vector": "v7"}, ["no steering vector 'v7'"]),
    "unknown tool": ("patch_everything", {}, ["Unknown tool"]),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_a_tool_error_that_says_what_is_valid(server, mistake):
    name, args, expected = MISTAKES[mistake]

    async def scenario(client):
        await ok(client, "run_with_cache", {"prompt": IOI_CLEAN})  # so that cache c1 exists
        return await refused(client, name, args)
    text = run(server, scenario)
    missing = [e for e in expected if e not in text]
    assert not missing, f"{mistake}: {missing} not in {text!r}"


def test_an_unexpected_exception_is_logged_and_returned_with_its_text(server, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("the attribution broke")
    monkeypatch.setattr("mcp_server.tools.reading.direct_logit_attribution", broken)

    async def scenario(client):
        text = await refused(client, "logit_attribution", {"prompt": IOI_CLEAN, "answer": " Mary"})
        return text, await ok(client, "tokenize", {"text": IOI_CLEAN})
    with caplog.at_level(logging.ERROR, logger="mcp_server"):
        text, after = run(server, scenario)
    assert "RuntimeError" in text and "the attribution broke" in text
    assert any(r.exc_info and "logit_attribution" in r.getMessage() for r in caplog.records), caplog.records
    assert after["tokens"]["n_tokens"] == 16, "the server still answers"


def test_a_request_over_a_memory_budget_is_refused_with_the_sizes(model, tmp_path):
    small_caches = Settings(out_dir=tmp_path, default_model="tiny", cache_budget=10_000)
    text = run(create_server(small_caches, models={"tiny": model}),
               lambda c: refused(c, "run_with_cache", {"prompt": IOI_CLEAN}))
    assert "cache budget" in text and "MiB" in text and "hooks=" in text
    small_models = Settings(out_dir=tmp_path, default_model="tiny", model_budget=1000)
    text = run(create_server(small_models, models={"tiny": model}), lambda c: refused(c, "load_model", {}))
    assert "model memory budget" in text and "bfloat16" in text


def test_caches_and_models_are_evicted_least_recently_used_first(tmp_path):
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    _, cache = a.run_with_cache(IOI_CLEAN)
    one_cache = max(cache.nbytes, estimate_bytes(a, list(cache.keys()), 16))
    settings = Settings(out_dir=tmp_path, default_model="a", model_budget=int(1.5 * model_bytes(a)),
                        cache_budget=int(2.5 * one_cache))  # room for two caches
    server = create_server(settings, models={"a": a, "b": b})

    async def scenario(client):
        handles = [(await ok(client, "run_with_cache", {"prompt": IOI_CLEAN}))["cache"] for _ in range(4)]
        gone = await refused(client, "get_activation", {"cache": handles[0], "hook": "embed"})
        kept = await ok(client, "get_activation", {"cache": handles[-1], "hook": "embed"})
        await ok(client, "load_model", {"name": "b"})  # a and its caches make room for b
        listed = await ok(client, "list_models", {})
        orphan = await refused(client, "get_activation", {"cache": handles[-1], "hook": "embed"})
        return gone, kept, listed, orphan
    gone, kept, listed, orphan = run(server, scenario)
    assert "no cache" in gone and kept["hook"] == "hook_embed"
    assert [m["handle"] for m in listed["loaded"]] == ["b"] and "no cache" in orphan
