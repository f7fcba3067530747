"""The server under load: cancelled calls stop, a busy model stalls nothing else, every tool keeps to a
memory budget, concurrent caches fit together. Each case is bounded by a timeout."""

import json
import os
import re
import subprocess
import sys
import threading
import time

import anyio
import pytest
from test_mcp_robustness import GOOD
from test_mcp_support import IOI_CLEAN, IOI_CORRUPTED, ok, refused, run, save_tiny_folder, tiny_model

from lens.analysis import logit_lens as lens_logit_lens
from lens.guard import Guard, guarded
from mcp_server import Settings, create_server

CASE_SECONDS = 60
# A sweep long enough that finishing it would take far longer than the limits below: 4 layers x 4 heads
# x ~450 positions of head outputs patched one by one on a ~450-token prompt.
LONG_PATCH = {"clean": IOI_CLEAN * 28, "corrupted": IOI_CORRUPTED * 28, "answer": " Mary", "baseline": " John",
              "what": "heads_by_pos", "plot": False}


@pytest.fixture(scope="module")
def slow_model():
    return tiny_model(seed=3, n_layers=4, d_model=128, d_head=32, d_mlp=512, n_ctx=2048)


def server_for(tmp_path, models: dict, **settings):
    """A server over in-memory models (the first is the default), with these Settings."""
    return create_server(Settings(out_dir=tmp_path / "plots", default_model=next(iter(models)), **settings),
                         models=models)


async def started(client, name, args, progress: list, task_group, results: list | None = None):
    """Start a call in the background and return once it has reported progress (it is computing)."""
    async def call():
        result = await client.call_tool(name, args, progress_callback=lambda done, total, _: progress.append(
            (done, total)))
        if results is not None:
            results.append(result)
    task_group.start_soon(call)
    with anyio.fail_after(CASE_SECONDS):
        while not progress:
            await anyio.sleep(0.05)


def test_a_cancelled_sweep_stops_and_the_next_call_on_its_model_is_answered_promptly(slow_model, tmp_path):
    async def scenario(client):
        progress = []
        async with anyio.create_task_group() as tg:
            await started(client, "patch", LONG_PATCH, progress, tg)
            await anyio.sleep(0.5)
            tg.cancel_scope.cancel()  # the client cancels: notifications/cancelled
        cancelled_at = time.monotonic()
        with anyio.fail_after(CASE_SECONDS):
            await ok(client, "tokenize", {"text": IOI_CLEAN})  # waits for the model the sweep held
        return progress[-1], time.monotonic() - cancelled_at
    (done, total), waited = run(server_for(tmp_path, {"slow": slow_model}), scenario)
    assert done < total / 4, f"the sweep was nearly done ({done}/{total}) when cancelled: the test proves nothing"
    assert waited < 3, f"the next call on the model waited {waited:.1f} s after the cancel"


def test_closing_stdin_mid_sweep_stops_the_work(tmp_path):
    """Over stdio, as a client that goes away does: the sweep stops at once (the server logs when it
    stopped, counted from the cancel), and the process exits."""
    folder = save_tiny_folder(tmp_path / "llama", hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                              max_position_embeddings=2048)
    server = subprocess.Popen([sys.executable, "-m", "mcp_server", "--model", str(folder), "--out",
                               str(tmp_path / "plots"), "--log-level", "INFO"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        def send(message):
            server.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
            server.stdin.flush()

        def receive(until):
            for line in server.stdout:
                message = json.loads(line)
                if until(message):
                    return message
            raise AssertionError("the server closed stdout")
        send({"id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                                          "clientInfo": {"name": "test", "version": "0"}}})
        receive(lambda m: m.get("id") == 1)
        send({"method": "notifications/initialized"})
        send({"id": 2, "method": "tools/call", "params": {"name": "patch", "arguments": LONG_PATCH,
                                                          "_meta": {"progressToken": "sweep"}}})
        progress = receive(lambda m: m.get("method") == "notifications/progress" or m.get("id") == 2)
        assert progress.get("method") == "notifications/progress", f"the sweep ended before any progress: {progress}"
        done, total = progress["params"]["progress"], progress["params"]["total"]
        _, log = server.communicate(timeout=CASE_SECONDS)  # closes stdin, reads to the end
    finally:
        server.kill()
    assert done < total / 4, f"the sweep was nearly done ({done}/{total}): the test proves nothing"
    stopped = re.search(rb"patch stopped ([0-9.]+) s after it was cancelled", log)
    assert stopped, f"the server never logged that the sweep stopped: {log[-2000:]!r}"
    assert float(stopped[1]) < 1.0, f"the sweep went on for {float(stopped[1]):.2f} s after stdin closed"


def test_fifty_calls_queued_on_a_busy_model_leave_list_models_and_other_models_answering(slow_model, tmp_path):
    async def scenario(client):
        progress, answered, listed = [], [], None
        async with anyio.create_task_group() as tg:
            await started(client, "patch", LONG_PATCH, progress, tg)
            for _ in range(50):
                tg.start_soon(client.call_tool, "tokenize", {"text": "hi"})
            await anyio.sleep(0.5)  # all 50 are waiting for the model now
            for name, args in [("list_models", {})] * 3 + [("tokenize", {"text": "hi", "model": "other"})]:
                begin = time.monotonic()
                with anyio.fail_after(CASE_SECONDS):
                    result = await ok(client, name, args)
                answered.append(time.monotonic() - begin)
                listed = result if name == "list_models" else listed
            tg.cancel_scope.cancel()
        return listed, answered
    listed, answered = run(server_for(tmp_path, {"slow": slow_model, "other": tiny_model()}), scenario)
    assert [m["handle"] for m in listed["loaded"]] == ["slow"]
    assert max(answered) < 2, f"list_models (3 calls) and a call on another model took {answered} s with 50 queued"


def test_a_call_that_waits_past_the_limit_gets_a_busy_error_naming_what_runs(slow_model, tmp_path):
    async def scenario(client):
        progress = []
        async with anyio.create_task_group() as tg:
            await started(client, "patch", LONG_PATCH, progress, tg)
            with anyio.fail_after(CASE_SECONDS):
                text = await refused(client, "logit_lens", {"prompt": IOI_CLEAN, "plot": False})
            tg.cancel_scope.cancel()
        return text
    text = run(server_for(tmp_path, {"slow": slow_model}, busy_timeout=1.0), scenario)
    assert "busy" in text and "patch" in text and "'slow'" in text, text


# Tools that run the model, with arguments that are valid but need more working memory than 4 KiB.
COMPUTING = ["run_with_cache", "logit_attribution", "logit_lens", "attention_pattern", "detect_heads", "patch", "attribution_patch", "path_patch", "ablate", "steer", "generate"]


def test_every_tool_that_computes_refuses_a_request_over_the_working_memory_budget(tmp_path):
    server = server_for(tmp_path, {"tiny": tiny_model(seed=1)}, work_budget=4 * 2**10)

    async def scenario(client):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        texts = {}
        for name in COMPUTING:
            schema = tools[name].input_schema
            # a prompt argument is optional in the schema where a dataset handle can stand for it
            wanted = [*schema.get("required", []), "prompt", "clean", "corrupted", "answer", "positive", "negative",
                      "plot"]
            args = {k: GOOD[k] for k in wanted if k in schema["properties"]}
            with anyio.fail_after(CASE_SECONDS):
                texts[name] = await refused(client, name, args)
        return texts, set(tools)
    texts, names = run(server, scenario)
    assert set(COMPUTING) <= names
    wrong = {n: t for n, t in texts.items() if not ("working-memory budget" in t and "MiB" in t and "To fit" in t)}
    assert not wrong, wrong


def test_a_huge_induction_sweep_is_refused_at_once_with_the_figure(tmp_path):
    server = server_for(tmp_path, {"tiny": tiny_model(seed=1, n_ctx=2048)}, work_budget=2**30)

    async def scenario(client):
        begin = time.monotonic()
        text = await refused(client, "detect_heads", {"kind": "induction", "seq_len": 512, "batch": 32,
                                                      "plot": False})
        return text, time.monotonic() - begin
    text, seconds = run(server, scenario)
    patterns = 3 * 32 * 4 * 1025**2 * 4  # layers x batch x heads x [BOS + 2 x 512]^2 float32 patterns kept: 1.5 GiB
    assert f"kept activations {patterns / 2**20:,.1f} MiB" in text and "smaller batch" in text, text
    assert seconds < 2, f"the refusal took {seconds:.1f} s"


def test_two_caches_made_at_once_stay_within_the_cache_budget_together(tmp_path):
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    _, cache = a.run_with_cache(IOI_CLEAN)
    budget = int(1.5 * cache.nbytes)
    final = f"blocks.{a.cfg.n_layers - 1}.hook_resid_post"

    async def scenario(client):
        results = {}

        async def make(name):
            results[name] = await client.call_tool("run_with_cache", {"prompt": IOI_CLEAN, "model": name})
        async with anyio.create_task_group() as tg:
            tg.start_soon(make, "a")
            await anyio.sleep(0.3)  # a's forward is under way (it sleeps in a hook), its cache not stored yet
            tg.start_soon(make, "b")
        held = []
        for result in results.values():
            if not result.is_error:
                handle = result.structured_content["cache"]
                if not (await client.call_tool("get_activation", {"cache": handle, "hook": "embed"})).is_error:
                    held.append(result.structured_content["size_mib"] * 2**20)
        return results, held
    inside = threading.Event()

    def slow(resid, point):
        inside.set()
        time.sleep(1.0)
    with a.hooks(fwd_hooks=[(final, slow)]):
        results, held = run(server_for(tmp_path, {"a": a, "b": b}, cache_budget=budget), scenario)
    assert not results["a"].is_error
    assert results["b"].is_error and "cache budget" in results["b"].content[0].text, results["b"]
    assert sum(held) <= budget, (held, budget)


def test_calls_on_two_models_at_once_share_the_working_memory_budget(tmp_path):
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    needs = []
    with guarded(Guard(reserve=lambda nbytes, what: needs.append(nbytes))):
        lens_logit_lens(a, IOI_CLEAN)
    args = {"prompt": IOI_CLEAN, "plot": False}
    final = f"blocks.{a.cfg.n_layers - 1}.hook_resid_post"

    async def scenario(client):
        results = {}

        async def lens(name):
            results[name] = await client.call_tool("logit_lens", args | {"model": name})
        async with anyio.create_task_group() as tg:
            tg.start_soon(lens, "a")
            with anyio.fail_after(CASE_SECONDS):
                while not inside.is_set():  # a's forward is under way (it sleeps in a hook), holding its reservation
                    await anyio.sleep(0.05)
            tg.start_soon(lens, "b")
        return results
    inside = threading.Event()

    def slow(resid, point):
        inside.set()
        time.sleep(1.0)
    with a.hooks(fwd_hooks=[(final, slow)]):
        results = run(server_for(tmp_path, {"a": a, "b": b}, work_budget=int(1.5 * max(needs))), scenario)
    assert not results["a"].is_error, results["a"].content[0].text
    text = results["b"].content[0].text
    assert results["b"].is_error and "held by running calls: logit_lens on 'a'" in text, text
