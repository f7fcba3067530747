"""The context the server costs an agent: the tool definitions a client sends to its model (name,
description, input schema, as compact JSON) stay within 20 KB all together, and every default answer
within its bound (2 KB for run_with_cache and logit_lens, 4 KB for every tool), on the tiny model and
on the default model. This polices tools added later too: a new tool's definition counts here."""

from __future__ import annotations

import json

import pytest
from test_mcp_support import IOI, IOI_CLEAN, IOI_CORRUPTED, run, tiny_model, tiny_server

from mcp_server import Settings, create_server
from mcp_server.definitions import size
from mcp_server.server import INSTRUCTIONS

DEFINITIONS_BUDGET = 20 * 1024  # bytes, every tool together
TOOL_BUDGET = 1800  # bytes, one tool's definition
ANSWER_BUDGET = 4096
SMALL_ANSWERS = {"run_with_cache": 2048, "logit_lens": 2048}  # the tools an agent calls first and often


def definitions(server) -> dict[str, int]:
    """tool name → bytes of its definition as the client lists it."""
    tools = run(server, lambda client: client.list_tools()).tools
    return {t.name: size(t.name, t.description, t.input_schema) for t in tools}


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def test_the_tool_definitions_fit_in_20_kb_and_each_in_its_share(model, tmp_path):
    sizes = definitions(tiny_server(model, tmp_path))
    total = sum(sizes.values())
    assert total <= DEFINITIONS_BUDGET, f"the tool definitions take {total} bytes (> {DEFINITIONS_BUDGET}): {sizes}"
    big = {name: n for name, n in sizes.items() if n > TOOL_BUDGET}
    assert not big, f"definitions over {TOOL_BUDGET} bytes: {big}"
    assert len(INSTRUCTIONS.encode()) <= 2048, "the server instructions (sent once) stay short"


def test_the_published_schema_keeps_types_enums_defaults_and_drops_pydantic_noise(model, tmp_path):
    tools = {t.name: t for t in run(tiny_server(model, tmp_path), lambda client: client.list_tools()).tools}
    text = json.dumps([t.input_schema for t in tools.values()])
    for noise in ('"title"', '{"type": "null"}', '"maxLength"', '"default": null'):
        assert noise not in text, f"{noise} left in a published schema"
    patch = tools["patch"].input_schema
    assert patch["properties"]["what"]["default"] == "resid_pre" and "heads" in patch["properties"]["what"]["enum"]
    assert "required" not in patch  # clean etc. or dataset: the tool says which is missing
    assert patch["properties"]["clean"]["type"] == ["string", "array"]  # one prompt, or one per row
    assert tools["steer"].input_schema["properties"]["coefficients"]["maxItems"] == 8  # a bound that informs
    for t in tools.values():
        assert 40 <= len(t.description) <= 400, f"{t.name}: {len(t.description)} characters of description"


def test_the_arguments_the_schema_leaves_unbounded_are_still_refused_when_absurd(model, tmp_path):
    async def scenario(client):
        return [await client.call_tool("patch", IOI | {"top_k": 0}),
                await client.call_tool("logit_lens", {"prompt": IOI_CLEAN, "model": "x" * 2000})]
    for result in run(tiny_server(model, tmp_path), scenario):
        assert result.is_error, result.structured_content


LONG = " ".join([IOI_CLEAN] * 3)  # ~48 tokens
DEFAULT_CALLS = [("list_models", {}), ("load_model", {}), ("model_info", {}), ("tokenize", {"text": LONG}),
                 ("run_with_cache", {"prompt": LONG}), ("logit_lens", {"prompt": LONG, "targets": [" Mary"]}),
                 ("logit_attribution", {"prompt": LONG, "answer": " Mary", "by": "neuron"}),
                 ("attention_pattern", {"prompt": LONG, "heads": ["L0H0", "L1H1", "L2H2", "L2H3"]}),
                 ("detect_heads", {}), ("detect_heads", {"kind": "previous_token"}),
                 ("patch", {"clean": LONG, "corrupted": LONG.replace("John gave", "Mary gave"), "answer": " Mary",
                            "what": "heads_by_pos"}),
                 ("ablate", {"prompt": LONG, "answer": " Mary", "what": "neurons"}),
                 ("steer", {"prompt": LONG, "positive": ["Mary"], "negative": ["John"]}),
                 ("generate", {"prompt": LONG, "max_new_tokens": 16}),
                 ("patch", {"clean": [IOI_CLEAN] * 3 + [LONG], "corrupted": [IOI_CORRUPTED] * 3 + [LONG.replace(
                     "John gave", "Mary gave")], "answer": " Mary", "baseline": " John"}),
                 ("dataset", {"task": "induction", "n": 20})]


def answer_sizes(server, calls) -> dict[str, int]:
    async def scenario(client):
        sizes = {}
        for name, args in calls:
            result = await client.call_tool(name, args)
            assert not result.is_error, f"{name}: {result.content[0].text}"
            sizes[name] = max(sizes.get(name, 0), len(result.content[0].text.encode()))
            assert json.loads(result.content[0].text) == result.structured_content, "the text is the same JSON"
        return sizes
    return run(server, scenario)


def over_budget(sizes: dict[str, int]) -> dict[str, int]:
    return {name: n for name, n in sizes.items() if n > SMALL_ANSWERS.get(name, ANSWER_BUDGET)}


def test_default_answers_stay_within_their_bounds_even_for_a_long_prompt(model, tmp_path):
    sizes = answer_sizes(tiny_server(model, tmp_path), DEFAULT_CALLS)
    assert not over_budget(sizes), sizes


@pytest.mark.real_model
def test_default_answers_stay_within_their_bounds_on_the_default_model(tmp_path):
    """smollm2-135m: 30 layers, 9 heads, 576 wide; the answers whose size grows with the model."""
    ioi = {"clean": IOI_CLEAN, "corrupted": IOI_CORRUPTED, "answer": " Mary", "baseline": " John"}
    calls = [("model_info", {}), ("run_with_cache", {"prompt": LONG}),
             ("logit_lens", {"prompt": "The Eiffel Tower is in the city of", "targets": [" Paris"]}),
             ("logit_attribution", {"prompt": IOI_CLEAN, "answer": " Mary", "baseline": " John"}),
             ("attention_pattern", {"prompt": LONG, "heads": ["L0H0", "L5H1", "L10H2", "L20H3"]}),
             ("detect_heads", {"plot": False}), ("patch", ioi | {"plot": False}),
             ("patch", ioi | {"what": "heads", "plot": False}), ("ablate", {"prompt": IOI_CLEAN, "answer": " Mary",
                                                                           "plot": False})]
    sizes = answer_sizes(create_server(Settings(out_dir=tmp_path / "plots")), calls)
    assert not over_budget(sizes), sizes
