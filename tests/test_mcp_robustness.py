"""Hundreds of randomised bad or extreme argument sets across every tool: each gets a result or a tool
error, none hangs or crashes the server, and a good call still answers the same afterwards."""

import json
import random

import anyio
import pytest
from test_mcp_support import (
    IOI_CLEAN,
    IOI_CORRUPTED,
    ok,
    run,
    tiny_model,
    tiny_server,
)

N_CASES = 520
SECONDS_PER_CALL = 30

# A valid value for each argument name the tools use; the fuzzer starts from these and breaks some.
GOOD = {
    "prompt": IOI_CLEAN, "text": IOI_CLEAN, "clean": IOI_CLEAN, "corrupted": IOI_CORRUPTED, "answer": " Mary",
    "baseline": " John", "targets": [" Mary"], "answers": [" Mary", " Paris"], "heads": ["L1H2"], "hook": "z",
    "hooks": ["resid_post"], "cache": "c1", "layer": 1, "layers": [0, 2], "pos": -1, "positions": [3, -1], "head": 1,
    "receivers": ["L2H1.q"], "senders": "heads", "components": ["L0H1", "L1.mlp"], "reference": [IOI_CORRUPTED],
    "positive": ["Mary gave"], "negative": ["John went"], "vector": "v1", "coefficients": [0, 2],
    "tokens": [" Mary"], "name": "tiny", "model": "tiny", "handle": "c1", "stop_strings": ["."], "seq_len": 8,
    "batch": 2, "max_new_tokens": 4, "top_k": 3, "plot": False,
}
STRINGS = ["", " ", "a", "x" * 60_000, "\x00", "🙂" * 50, "L99H99", "blocks.99.hook_z", "../../etc/passwd", "/tmp",
           "c0", "v0", "resid", "-1", "null", "' OR 1=1", "Mary " * 400, "\n\t"]
NUMBERS = [-1, 0, 1, 2, 7, 63, 255, 256, 10**6, -10**6, 2**63, -(2**63), 2**100, 3.5, float("nan"), float("inf"),
           -float("inf"), 1e-300]
ANYTHING = [None, True, False, [], {}, [None], {"a": 1}, [[1, 2]], "3", ["L1H2"] * 300, [0] * 5000]


def bad_value(schema: dict, rng: random.Random):
    """A value that is wrong for this argument, or valid but extreme."""
    types = [s.get("type") for s in schema.get("anyOf", [schema])]  # a type may be a list: ["string", "array"]
    kinds = {k for t in types for k in (t if isinstance(t, list) else [t])}
    pool = list(ANYTHING)
    if "string" in kinds or "enum" in schema or any("enum" in s for s in schema.get("anyOf", [])):
        pool += STRINGS + ["bogus", "heads", "mlps", "neurons", "logits"]
    if kinds & {"integer", "number"}:
        pool += NUMBERS * 2
    if "array" in kinds:
        pool += [[rng.choice(STRINGS)], [rng.choice(NUMBERS)], [rng.choice(STRINGS + NUMBERS)] * rng.randint(2, 40),
                 list(range(-50, 50))]
    if "boolean" in kinds:
        pool += [True, False, "yes", 2]
    return rng.choice(pool)


def arguments(tool, rng: random.Random) -> dict:
    properties = tool.input_schema.get("properties", {})
    required = set(tool.input_schema.get("required", []))
    args = {name: GOOD[name] for name in properties if name in GOOD and (name in required or rng.random() < 0.5)}
    for name in rng.sample(sorted(properties), k=min(len(properties), rng.choice([0, 1, 1, 2, 3]))):
        args[name] = bad_value(properties[name], rng)
    if required and rng.random() < 0.05:
        args.pop(rng.choice(sorted(required)), None)
    if rng.random() < 0.05:
        args["no_such_argument"] = rng.choice(ANYTHING)
    if "plot" in properties and rng.random() < 0.97:
        args["plot"] = False  # drawing is slow and tested elsewhere
    return args


@pytest.fixture
def server(tmp_path):
    return tiny_server(tiny_model(seed=7), tmp_path)


def test_randomised_bad_arguments_get_a_result_or_a_tool_error_and_the_server_survives(server):
    rng = random.Random(1234)
    good = {"prompt": IOI_CLEAN, "answer": " Mary", "baseline": " John", "plot": False}
    outcomes = {"result": 0, "tool error": 0}
    crashes = []

    async def scenario(client):
        before = await ok(client, "logit_attribution", good)
        tools = (await client.list_tools()).tools
        for case in range(N_CASES):
            if case % 50 == 0:  # keep something for the cache / vector handles to point at
                await ok(client, "run_with_cache", {"prompt": IOI_CLEAN})
            tool = tools[case % len(tools)]
            args = arguments(tool, rng)
            with anyio.fail_after(SECONDS_PER_CALL):
                result = await client.call_tool(tool.name, args)
            if result.is_error:
                outcomes["tool error"] += 1
                text = result.content[0].text
                assert text.strip(), f"{tool.name}({args}): an empty error"
                if "unexpected" in text or "internal error" in text or text == f"Error executing tool {tool.name}":
                    crashes.append((tool.name, args, text))
            else:
                outcomes["result"] += 1
                assert result.structured_content is not None, f"{tool.name}({args}) returned no structured content"
                json.dumps(result.structured_content, allow_nan=True)
        after = await ok(client, "logit_attribution", good)
        return before, after
    before, after = run(server, scenario)
    assert after == before, "a good call answers the same after the barrage"
    assert outcomes["result"] > 50 and outcomes["tool error"] > 200, outcomes
    assert not crashes, "errors that escaped as unexpected exceptions:\n" + "\n".join(map(repr, crashes[:10]))

