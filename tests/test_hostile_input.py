"""Hostile files and requests: refused fast, before anything is read, allocated or run."""

import os
import struct
import threading
import time

import pytest
import torch
from test_mcp_support import IOI_CLEAN, IOI_CORRUPTED, refused, run, save_tiny_folder, tiny_model, tiny_server

import lens
from lens import patching
from lens.loading import checkpoints
from mcp_server import Settings, create_server
from mcp_server.state import State

CASE_SECONDS = 20


def within(seconds: float, fn, *args, **kwargs):
    """fn(...)'s result or exception, on a thread; a failure if it has not ended after `seconds`."""
    out = {}

    def target():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            out["error"] = error
    thread = threading.Thread(target=target, daemon=True)
    begin = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} still running after {seconds} s"
    return out, time.monotonic() - begin


def gguf_header(n_tensors: int, n_kv: int, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


COUNT_BOMBS = {
    # 60 bytes that claim 2^62 metadata entries
    "metadata count": gguf_header(0, 2**62).ljust(60, b"\0"),
    # one metadata entry: an array of 2^62 strings
    "array length": gguf_header(0, 1, gguf_string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2**62)),
    # one string whose length is 2^62
    "string length": gguf_header(0, 1, gguf_string(b"general.name") + struct.pack("<IQ", 8, 2**62)),
    # a tensor claiming 2^40 x 2^40 float32 elements
    "tensor shape": gguf_header(1, 0, gguf_string(b"w") + struct.pack("<IQQIQ", 2, 2**40, 2**40, 0, 0)),
}


@pytest.mark.parametrize("bomb", list(COUNT_BOMBS))
def test_a_gguf_claiming_impossible_counts_is_refused_at_once(tmp_path, bomb):
    path = tmp_path / "bomb.gguf"
    path.write_bytes(COUNT_BOMBS[bomb])
    out, seconds = within(CASE_SECONDS, lens.HookedTransformer.from_pretrained, str(path))
    assert isinstance(out.get("error"), lens.CorruptCheckpointError), out
    assert "not a readable GGUF" in str(out["error"]) and seconds < 1, (str(out["error"]), seconds)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_posing_as_weights_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    out, _ = within(CASE_SECONDS, lens.HookedTransformer.from_pretrained, str(fifo))
    assert isinstance(out.get("error"), lens.CorruptCheckpointError) and "not a regular file" in str(out["error"])
    folder = save_tiny_folder(tmp_path / "llama")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    out, _ = within(CASE_SECONDS, lens.HookedTransformer.from_pretrained, str(folder), device="cpu")
    assert isinstance(out.get("error"), lens.CorruptCheckpointError) and "not a regular file" in str(out["error"])


def test_a_safetensors_header_claiming_more_bytes_than_the_file_is_refused(tmp_path):
    folder = save_tiny_folder(tmp_path / "llama")
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(lens.CorruptCheckpointError, match="header claims"):
        lens.HookedTransformer.from_pretrained(str(folder), device="cpu")


def test_a_pickle_is_refused_saying_lens_never_unpickles_and_how_to_convert(tmp_path):
    folder = save_tiny_folder(tmp_path / "llama")
    (folder / "model.safetensors").unlink()
    torch.save({"weight": torch.zeros(2), "step": slice(1, 2)}, folder / "pytorch_model.bin")  # not plain tensors
    with pytest.raises(lens.CorruptCheckpointError) as error:
        lens.HookedTransformer.from_pretrained(str(folder), device="cpu")
    text = str(error.value)
    assert "never unpickles" in text and "save_file" in text and "safetensors" in text, text


def test_the_model_budget_is_checked_before_any_weight_is_read(tmp_path, monkeypatch):
    folder = save_tiny_folder(tmp_path / "llama")

    def no_weights(folder):
        raise AssertionError("weights were read before the budget check")
    monkeypatch.setattr(checkpoints, "read_weights", no_weights)
    with pytest.raises(lens.InsufficientMemoryError, match="model memory budget"):
        lens.HookedTransformer.from_pretrained(str(folder), device="cpu", max_bytes=1000)


def test_a_hub_that_never_answers_times_out_and_blocks_no_other_load(tmp_path, monkeypatch):
    never = threading.Event()
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *a, **k: never.wait())
    monkeypatch.setenv("LENS_HUB_TIMEOUT", "2")
    state = State(Settings(out_dir=tmp_path, default_model="tiny"), registered={"tiny": tiny_model()})
    stuck = threading.Thread(target=lambda: within(CASE_SECONDS, state.load, "some-org/some-model"), daemon=True)
    stuck.start()
    time.sleep(0.2)
    out, seconds = within(CASE_SECONDS, state.load, "tiny")  # another model loads meanwhile
    assert out["value"][0].handle == "tiny" and seconds < 1, (out, seconds)
    out, seconds = within(CASE_SECONDS, state.load, "other-org/other-model")
    never.set()
    assert "did not deliver" in str(out.get("error")) and 1.5 < seconds < 5, (out, seconds)


def test_load_model_paths_are_confined_to_the_allowed_folders(tmp_path):
    allowed, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    save_tiny_folder(allowed / "llama")
    save_tiny_folder(elsewhere / "llama")
    settings = Settings(out_dir=tmp_path / "plots", default_model="tiny", model_dirs=[allowed], device="cpu")
    server = create_server(settings, models={"tiny": tiny_model()})

    async def scenario(client):
        outside = await refused(client, "load_model", {"name": str(elsewhere / "llama")})
        escape = await refused(client, "load_model", {"name": str(allowed / ".." / "elsewhere" / "llama")})
        inside = await client.call_tool("load_model", {"name": str(allowed / "llama")})
        return outside, escape, inside
    outside, escape, inside = run(server, scenario)
    assert "outside them" in outside and "outside them" in escape
    assert not inside.is_error, inside.content[0].text


# --- input checks before any forward --------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


def forwards_during(model, fn):
    """(fn()'s exception, how many forwards ran meanwhile)."""
    count = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, point: count.append(1))]):
        with pytest.raises(ValueError) as error:
            fn()
    return str(error.value), len(count)


PATH_MISTAKES = {
    "no senders": ({"senders": []}, "senders is empty"),
    "a sender after its receiver": ({"senders": ["L2H0"], "receivers": ["L1H1.q"]}, "no path runs"),
    "a sender in its receiver's layer": ({"senders": ["L1H0"], "receivers": ["L1H1.q"]}, "no path runs"),
    "a sender listed twice": ({"senders": ["L0H1", "L0H1"]}, "more than once"),
    "a receiver listed twice": ({"receivers": ["L2H1.q", "L2H1.q"]}, "more than once"),
    "a position given twice": ({"positions": [3, 3 - 16]}, "more than once"),
}


@pytest.mark.parametrize("mistake", list(PATH_MISTAKES))
def test_path_patch_mistakes_are_errors_before_any_forward(model, mistake):
    change, expected = PATH_MISTAKES[mistake]
    args = {"receivers": ["L2H1.q"], "senders": ["L0H1"]} | change
    metric = patching.logit_diff(model, " Mary", " John")
    text, n = forwards_during(model, lambda: patching.path_patch(model, IOI_CLEAN, IOI_CORRUPTED, metric, **args))
    assert expected in text and n == 0, (text, n)


def test_duplicated_layers_or_positions_in_a_sweep_are_errors_before_any_forward(model):
    metric = patching.logit_diff(model, " Mary", " John")
    text, n = forwards_during(model, lambda: patching.patch(model, IOI_CLEAN, IOI_CORRUPTED, metric, layers=[1, -2]))
    assert "layers [1]" in text and "more than once" in text and n == 0, (text, n)


@pytest.mark.parametrize("components, expected", [([], "components is empty"),
                                                    (["L0H1", "L1.mlp", "L0H1"], "more than once")])
def test_ablation_mistakes_are_errors_before_any_forward(model, components, expected):
    metric = patching.logit_diff(model, " Mary", " John")
    text, n = forwards_during(model, lambda: patching.ablate(model, IOI_CLEAN, metric, components=components))
    assert expected in text and n == 0, (text, n)


def test_the_path_patch_tool_reports_an_empty_sender_list(model, tmp_path):
    args = {"clean": IOI_CLEAN, "corrupted": IOI_CORRUPTED, "answer": " Mary", "receivers": ["L2H1.q"], "senders": []}
    text = run(tiny_server(model, tmp_path), lambda client: refused(client, "path_patch", args))
    assert "senders is empty" in text, text
