"""What the server holds between tool calls: loaded models and activation caches, under handles.

One `State` lives in the server's lifespan. Models and caches each have a memory budget; when a
new one would not fit, the least recently used ones are dropped (a model takes its caches with
it), and a request that alone exceeds its budget is refused with a ToolError that says by how
much. A third budget bounds the working memory of the calls running at once: each call reserves
the largest forward it makes (lens.guard), atomically, as a cache being made reserves its size
until it is stored, so concurrent calls cannot exceed a budget together. Each model has a lock, so
tool calls on one model run one at a time (mcp_server/calls.py: waiting holds no thread); calls
on different models may overlap, and loads of different models too (one lock per model loaded).
"""

from __future__ import annotations

import difflib
import gc
import itertools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import torch
from mcp.server.mcpserver.exceptions import ToolError

from lens import DEFAULT_MODEL, HookedTransformer, list_models
from lens.cache import ActivationCache
from lens.guard import Guard
from mcp_server.calls import BusyError, Call, ModelLock, current_call, run_guarded
from mcp_server.plots import PlotFolder

GiB = 2**30
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROCESSING_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 16 * GiB


def default_out_dir() -> Path:
    return Path(os.environ.get("LENS_CACHE", Path.home() / ".cache" / "lens")) / "mcp-plots"


@dataclass
class Settings:
    """How a server runs; the CLI flags map onto these fields."""

    out_dir: Path = field(default_factory=default_out_dir)
    default_model: str = DEFAULT_MODEL
    device: str | None = None  # None: cuda when available
    model_budget: int = field(default_factory=lambda: _physical_memory() // 2)  # bytes of weights
    cache_budget: int = field(default_factory=lambda: min(_physical_memory() // 4, 8 * GiB))  # bytes of activations
    work_budget: int = field(default_factory=lambda: min(_physical_memory() // 4, 8 * GiB))  # running calls, together
    busy_timeout: float = 120.0  # seconds a call waits for a busy model (or another call's load of it)
    max_waiting: int = 64  # calls queued on one model before more are refused at once
    model_dirs: list[Path] | None = None  # load_model paths must lie inside one of these (None: anywhere)
    max_threads: int = 16  # worker threads for tool calls (the SDK's own pool stays free)


@dataclass
class LoadedModel:
    handle: str
    source: str  # the alias, path or registered name it was loaded from
    options: dict  # dtype and processing flags
    model: HookedTransformer
    nbytes: int
    lock: ModelLock  # one per model object, so a model registered in memory and admitted again keeps it


@dataclass
class StoredCache:
    handle: str
    model_handle: str
    cache: ActivationCache
    str_tokens: list[str]
    nbytes: int


@dataclass
class StoredVector:
    """A steering vector [d_model] and where it was read (small: not counted against a budget)."""

    handle: str
    model_handle: str
    layer: int
    hook: str  # short name: resid_post, ...
    vector: torch.Tensor


@dataclass
class StoredDataset:
    """A prompt set (lens.data.PromptSet) tokenized for one model (small: not counted against a budget)."""

    handle: str
    model_handle: str
    prompt_set: object


@dataclass
class StoredCircuit:
    """A circuit find_circuit found, with the prompt set and metric it was found on (for evaluate_circuit)."""

    handle: str
    model_handle: str
    found: object  # lens.circuits.FoundCircuit
    prompt_set: object  # lens.data.PromptSet
    metric: object
    path: Path  # its JSON (lens.circuits.circuit's format)


def model_bytes(model: torch.nn.Module) -> int:
    tensors = itertools.chain(model.parameters(), model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


class State:
    def __init__(self, settings: Settings, registered: dict[str, HookedTransformer] | None = None):
        self.settings = settings
        self.plots = PlotFolder(settings.out_dir)
        self.registered = dict(registered or {})  # in-memory models, loadable by name (tests, notebooks)
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self.caches: OrderedDict[str, StoredCache] = OrderedDict()
        self._lock = threading.RLock()  # guards the dicts and the running calls
        self._loading: dict[str, threading.Lock] = {}  # one load at a time per model handle
        self.calls: set[Call] = set()  # the tool calls running or waiting now
        self._model_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → its ModelLock
        self.threads = anyio.CapacityLimiter(settings.max_threads)
        self.vectors: dict[str, StoredVector] = {}
        self.datasets: dict[str, StoredDataset] = {}
        self._cache_ids = itertools.count(1)
        self._vector_ids = itertools.count(1)
        self._dataset_ids = itertools.count(1)
        self.circuits: dict[str, StoredCircuit] = {}
        self._circuit_ids = itertools.count(1)
        self.current: str | None = None  # the model a call that names none uses: the last one loaded

    # --- models ------------------------------------------------------------------------------

    def known_sources(self) -> list[str]:
        return list(self.registered) + [m["alias"] for m in list_models()]

    def load(self, source: str | None = None, dtype: str = "float32", **flags: bool) -> tuple[LoadedModel, bool]:
        """(the model, whether it was loaded now). Loading what is already loaded returns it."""
        source = source or self.settings.default_model
        options = {"dtype": dtype, **{f: bool(flags.get(f, False)) for f in PROCESSING_FLAGS}}
        handle = _handle(source, options)
        self.check_allowed(source)
        with self._lock:
            loading = self._loading.setdefault(handle, threading.Lock())
        if not loading.acquire(timeout=self.settings.busy_timeout):
            raise BusyError(f"{handle!r} has been loading in another call for over {self.settings.busy_timeout:.0f} s; "
                       f"retry later (other models load meanwhile)")
        try:
            with self._lock:
                if handle in self.models:
                    self.models.move_to_end(handle)
                    return self.models[handle], False
            model = self._build(source, options)
            with self._lock:
                lock = self._model_locks.setdefault(model, ModelLock(handle))
            entry = LoadedModel(handle, source, options, model, model_bytes(model), lock)
            self._admit_model(entry)
        finally:
            loading.release()
        return entry, True

    def check_allowed(self, source: str) -> None:
        """With model_dirs set, a local path must lie inside one of them (aliases and hub ids load)."""
        dirs = self.settings.model_dirs
        if dirs is None or source in self.registered or not _is_path(source):
            return
        path = Path(source).expanduser().resolve()
        if not any(path.is_relative_to(Path(d).expanduser().resolve()) for d in dirs):
            raise ToolError(f"this server loads local models only from {[str(d) for d in dirs]} (--model-dir); "
                            f"{source!r} is outside them. Use a registry alias (list_models) or a file inside.")

    def make_current(self, entry: LoadedModel) -> None:
        self.current = entry.handle

    def _build(self, source: str, options: dict) -> HookedTransformer:
        flags = {f: options[f] for f in PROCESSING_FLAGS}
        if source in self.registered:
            model = self.registered[source]
            if DTYPES[options["dtype"]] != model.dtype or any(flags.values()):
                raise ToolError(f"{source!r} is a model registered in memory; it loads only as it is "
                                f"({str(model.dtype).removeprefix('torch.')}, no weight processing)")
            return model
        return HookedTransformer.from_pretrained(source, device=self.settings.device, dtype=DTYPES[options["dtype"]],
                                                 max_bytes=self.settings.model_budget, **flags)

    def _admit_model(self, entry: LoadedModel) -> None:
        budget = self.settings.model_budget
        if entry.nbytes > budget:
            raise ToolError(f"{entry.handle!r} needs {mib(entry.nbytes)} of weights, more than the model memory "
                            f"budget of {mib(budget)} on its own. Load it in bfloat16 (dtype='bfloat16'), pick a "
                            f"smaller model, or restart the server with a larger --model-budget-gb.")
        with self._lock:
            while self.models and sum(m.nbytes for m in self.models.values()) + entry.nbytes > budget:
                self._drop_model(next(iter(self.models)))
            self.models[entry.handle] = entry

    def _drop_model(self, handle: str) -> None:
        # A call still running on it keeps its own reference; the memory goes when that call ends.
        del self.models[handle]
        for cache in [c for c in self.caches.values() if c.model_handle == handle]:
            del self.caches[cache.handle]
        for vector in [v for v in self.vectors.values() if v.model_handle == handle]:
            del self.vectors[vector.handle]
        for stored in [d for d in self.datasets.values() if d.model_handle == handle]:
            del self.datasets[stored.handle]
        for circuit in [c for c in self.circuits.values() if c.model_handle == handle]:
            del self.circuits[circuit.handle]
        if self.current == handle:
            self.current = None
        gc.collect()

    def resolve(self, ref: str | None) -> LoadedModel:
        """A handle, or a name that loads with default options. None = the model load_model returned
        last, or else the default model (loaded now if need be)."""
        with self._lock:
            ref = self.current if ref is None and self.current in self.models else ref
            if ref in self.models:
                self.models.move_to_end(ref)
                return self.models[ref]
        if ref is None or ref in self.known_sources() or _is_path(ref):
            entry = self.load(ref)[0]
            self.current = self.current or entry.handle
            return entry
        loaded = list(self.models)
        near = difflib.get_close_matches(ref, loaded + self.known_sources(), n=3, cutoff=0.4)
        raise ToolError(f"no model {ref!r}. Loaded handles: {loaded or 'none'}; loadable names: "
                        f"{self.known_sources()}" + (f"; did you mean {near}?" if near else "") +
                        ". Load a model with load_model (an alias, a local HF folder or a .gguf path).")

    def loaded(self, ref: str | None) -> LoadedModel | None:
        """The loaded model `ref` names (None: the current one), or None if it needs loading."""
        with self._lock:
            ref = self.current if ref is None else ref
            return self.models.get(ref) if ref is not None else None

    @contextmanager
    def using(self, ref: str | None) -> Iterator[LoadedModel]:
        """The model, held for this call alone (calls on one model run one at a time). A tool call's
        own model was taken before its thread started (`calling`); any other waits here, up to busy_timeout."""
        call = current_call()
        if call is not None and call.entry is not None and ref in (call.ref, call.entry.handle):
            yield call.entry
            return
        entry = self.resolve(ref)
        entry.lock.acquire(call, self.settings.busy_timeout)
        try:
            yield entry
        finally:
            entry.lock.release()

    @asynccontextmanager
    async def calling(self, call: Call, needs_model: bool, ref: str | None = None) -> AsyncIterator[Call]:
        """Register a tool call for its duration: its guard (cancel flag, working-memory reservation) and,
        when it needs a model, that model (loaded on a worker thread if need be), waited for asynchronously."""
        call.guard = Guard(max_bytes=self.settings.work_budget, reserve=lambda n, what: self.reserve_work(call, n, what),
                           limit_name="the server's working-memory budget (--work-budget-gb)")
        with self._lock:
            self.calls.add(call)
        try:
            if needs_model:
                entry = self.loaded(ref) or await run_guarded(call, lambda: self.resolve(ref), self.threads)
                await entry.lock.acquire_async(call, self.settings.busy_timeout, self.settings.max_waiting)
                call.ref, call.entry = ref, entry
            try:
                yield call
            finally:
                if call.entry is not None:
                    call.entry.lock.release()
        finally:
            with self._lock:
                self.calls.discard(call)

    def reserve_work(self, call: Call, nbytes: int, what: str) -> None:
        """Raise the call's working-memory reservation to nbytes, if the running calls together stay within
        the budget (the guard has already refused what alone exceeds it)."""
        with self._lock:
            if nbytes <= call.work_bytes:
                return
            others = [c for c in self.calls if c is not call and c.work_bytes]
            used = sum(c.work_bytes for c in others)
            if used + nbytes > self.settings.work_budget:
                raise BusyError(f"{what} needs about {mib(nbytes)} of working memory, but {mib(used)} of the "
                           f"{mib(self.settings.work_budget)} budget is held by running calls: "
                           f"{'; '.join(c.describe() for c in others)}. Retry when they finish.")
            call.work_bytes = nbytes

    def release_model(self, handle: str) -> int:
        with self._lock:
            if handle not in self.models:
                raise ToolError(f"no model handle {handle!r}; loaded: {list(self.models) or 'none'}")
            n_caches = sum(c.model_handle == handle for c in self.caches.values())
            self._drop_model(handle)
        return n_caches

    # --- caches ------------------------------------------------------------------------------

    def reserve_cache(self, nbytes: int) -> None:
        """Make room for a cache of about nbytes, dropping the least recently used ones. Within a tool call the
        room stays reserved until store_cache (or the call's end), so caches made at once fit together."""
        budget = self.settings.cache_budget
        if nbytes > budget:
            raise ToolError(f"caching these activations would take about {mib(nbytes)}, more than the cache "
                            f"budget of {mib(budget)}. Cache fewer hooks (hooks=['resid_post', ...]), use a "
                            f"shorter prompt, or restart the server with a larger --cache-budget-gb.")
        call = current_call()
        with self._lock:
            pending = sum(c.cache_bytes for c in self.calls if c is not call)
            while self.caches and sum(c.nbytes for c in self.caches.values()) + pending + nbytes > budget:
                self.caches.popitem(last=False)  # its tensors are freed as the last reference goes
            if pending + nbytes > budget:
                raise BusyError(f"caching these activations would take about {mib(nbytes)}, and caches being made by "
                           f"running calls hold {mib(pending)} of the {mib(budget)} cache budget; retry when they end")
            if call is not None:
                call.cache_bytes = nbytes

    def store_cache(self, model_handle: str, cache: ActivationCache, str_tokens: list[str]) -> StoredCache:
        call = current_call()
        with self._lock:
            entry = StoredCache(f"c{next(self._cache_ids)}", model_handle, cache, str_tokens, cache.nbytes)
            self.caches[entry.handle] = entry
            if call is not None:
                call.cache_bytes = 0
        return entry

    def cache(self, handle: str) -> StoredCache:
        with self._lock:
            if handle not in self.caches:
                raise ToolError(f"no cache {handle!r}; caches held now: {list(self.caches) or 'none'} (a cache "
                                f"is dropped when the cache budget needs room or its model is unloaded). "
                                f"Run run_with_cache to make one.")
            self.caches.move_to_end(handle)
            return self.caches[handle]

    def release_cache(self, handle: str) -> None:
        with self._lock:
            self.cache(handle)
            del self.caches[handle]

    # --- steering vectors ---------------------------------------------------------------------

    def store_vector(self, model_handle: str, layer: int, hook: str, vector: torch.Tensor) -> StoredVector:
        with self._lock:
            entry = StoredVector(f"v{next(self._vector_ids)}", model_handle, layer, hook, vector)
            self.vectors[entry.handle] = entry
        return entry

    def vector(self, handle: str, model_handle: str) -> StoredVector:
        return self._stored(self.vectors, handle, model_handle, "steering vector", "built on",
                            "steer (positive and negative prompts)")

    # --- prompt sets --------------------------------------------------------------------------

    def store_dataset(self, model_handle: str, prompt_set) -> StoredDataset:
        with self._lock:
            entry = StoredDataset(f"d{next(self._dataset_ids)}", model_handle, prompt_set)
            self.datasets[entry.handle] = entry
        return entry

    def dataset(self, handle: str, model_handle: str) -> StoredDataset:
        return self._stored(self.datasets, handle, model_handle, "dataset", "tokenized for",
                            "dataset(task=...) or dataset(path=...)")

    # --- circuits ------------------------------------------------------------------------------

    def store_circuit(self, model_handle: str, found, prompt_set, metric) -> StoredCircuit:
        with self._lock:
            handle = f"k{next(self._circuit_ids)}"
            path = found.circuit.save(self.plots.root / "circuits" / f"{handle}-{found.circuit.n_edges}edges.json")
            entry = StoredCircuit(handle, model_handle, found, prompt_set, metric, path)
            self.circuits[handle] = entry
        return entry

    def circuit(self, handle: str, model_handle: str) -> StoredCircuit:
        return self._stored(self.circuits, handle, model_handle, "circuit", "found on", "find_circuit")

    def _stored(self, held: dict, handle: str, model_handle: str, what: str, made: str, how: str):
        """The entry a handle names in `held` (steering vectors, datasets, circuits), which belongs to one
        model: a handle that is not there, or that was `made` on another model, is a ToolError naming the
        handles there are and the call that makes one (`how`)."""
        with self._lock:
            entry = held.get(handle)
            stored = list(held) or "none"
        if entry is None:
            raise ToolError(f"no {what} {handle!r}; stored: {stored}. Make one with {how}.")
        if entry.model_handle != model_handle:
            raise ToolError(f"{what} {handle!r} was {made} {entry.model_handle!r}, not {model_handle!r}; it belongs "
                            f"to that model: make one for this model with {how}.")
        return entry

    def close(self) -> None:
        with self._lock:
            self.circuits.clear()
            self.caches.clear()
            self.vectors.clear()
            self.datasets.clear()
            self.models.clear()


def _is_path(name: str) -> bool:
    try:
        return Path(name).expanduser().exists()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL
        return False


def _handle(source: str, options: dict) -> str:
    """The source itself, with the non-default options appended: 'smollm2-135m[bfloat16,fold_ln]'."""
    extras = ([options["dtype"]] if options["dtype"] != "float32" else []) + [f for f in PROCESSING_FLAGS if options[f]]
    return source + (f"[{','.join(extras)}]" if extras else "")


def state_of(ctx) -> State:
    """The State a tool's Context carries (what the server's lifespan yielded)."""
    return ctx.request_context.lifespan_context
