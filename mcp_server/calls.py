"""How a tool call runs: it waits for its model without holding a thread, then works on a worker thread
under a lens guard (a cancel flag and a memory reservation) until it ends or is cancelled.

The SDK runs a sync tool on a worker thread of a shared pool and, when the client cancels the
request or goes away (disconnect, stdin closed), cancels the task awaiting it; a thread cannot be
interrupted, so without help the work would run on, holding the model. Here each call gets a
`Call` with a `lens.guard.Guard`: cancelling the task sets the guard's flag, which lens checks at
every block of every forward, so the work stops within about a second and the model is free again.

Calls on one model run one at a time. A call waits for its model asynchronously (polling a lock:
no thread is held while it waits), so any number of waiting calls leave the worker threads to
everything else, and a call that has waited `busy_timeout` seconds, or finds `max_waiting` calls
already queued, gets a "busy" error naming what is running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from mcp.server.mcpserver.exceptions import ToolError

from lens.guard import Guard, guarded

if TYPE_CHECKING:
    from mcp_server.state import LoadedModel

log = logging.getLogger("mcp_server")
POLL = (0.002, 0.05)  # seconds between tries for a busy model: first, and at most (it doubles)
PROGRESS_INTERVAL = 0.5  # seconds between progress notifications


class BusyError(ToolError):
    """The model, or the memory, a call needs is taken by running calls; retry later."""


@dataclass(eq=False)
class Call:
    """One tool call in flight: what it is, what it holds, and the guard its lens work runs under."""

    tool: str
    guard: Guard = field(default_factory=Guard)
    started: float = field(default_factory=time.monotonic)
    ref: str | None = None  # the model reference the call named (None: the current model)
    entry: LoadedModel | None = None  # the model it holds (its lock is taken)
    work_bytes: int = 0  # working memory reserved (the largest forward so far)
    cache_bytes: int = 0  # a cache being made, not stored yet
    progress: tuple[float, float, str] | None = None  # (done, total, message), set by the worker thread
    report: Callable[[float, float, str], Awaitable] | None = None  # sends progress to the client
    sent: tuple[float, float, str] | None = None  # the progress last sent
    cancelled_at: float | None = None

    def describe(self) -> str:
        on = f" on {self.entry.handle!r}" if self.entry is not None else ""
        done = f", {self.progress[0] / self.progress[1]:.0%} done" if self.progress and self.progress[1] else ""
        return f"{self.tool}{on} (running {time.monotonic() - self.started:.0f} s{done})"


_call: ContextVar[Call | None] = ContextVar("lens_mcp_call", default=None)


def current_call() -> Call | None:
    return _call.get()


class ModelLock:
    """One call at a time on a model. Waiters poll without holding a thread (async) or block a thread
    (the fallback for a model a tool picks up mid-call); either gives up with BusyError."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self.holder: Call | None = None
        self.waiting = 0

    def _busy(self, waited: float) -> BusyError:
        running = self.holder.describe() if self.holder is not None else "a call"
        return BusyError(f"model {self.name!r} is busy: {running}, with {self.waiting} more call(s) waiting; "
                         f"gave up after {waited:.0f} s. Retry later, cancel the running call, or use another model.")

    async def acquire_async(self, call: Call, timeout: float, max_waiting: int) -> None:
        if self.waiting >= max_waiting and self._lock.locked():
            raise self._busy(0)
        self.waiting += 1
        try:
            start, delay = time.monotonic(), POLL[0]
            while not self._lock.acquire(blocking=False):
                if time.monotonic() - start > timeout:
                    raise self._busy(time.monotonic() - start)
                await anyio.sleep(delay)
                delay = min(2 * delay, POLL[1])
        finally:
            self.waiting -= 1
        self.holder = call

    def acquire(self, call: Call | None, timeout: float) -> None:
        if not self._lock.acquire(timeout=timeout):
            raise self._busy(timeout)
        self.holder = call

    def release(self) -> None:
        self.holder = None
        self._lock.release()


async def _send_progress(call: Call) -> None:
    """Send the call's latest progress if it is new."""
    if call.report is None or call.progress is None or call.progress == call.sent:
        return
    call.sent = call.progress
    try:
        await call.report(*call.sent)
    except Exception as error:  # noqa: BLE001 - a closed session: no progress, the work goes on
        log.debug("progress not reported: %s", error)


async def _watch(call: Call, finished: anyio.Event) -> None:
    """While the work runs: send its progress from the event loop (the worker thread never waits on the
    client), and set its cancel flag if the task awaiting it is cancelled (client cancel, disconnect)."""
    try:
        while True:
            await anyio.sleep(PROGRESS_INTERVAL)
            await _send_progress(call)
    finally:
        if not finished.is_set():
            call.cancelled_at = time.monotonic()
            call.guard.cancel("the call was cancelled (by the client, or because it disconnected)")


async def run_guarded(call: Call, fn: Callable, limiter: anyio.CapacityLimiter | None = None):
    """fn() on a worker thread under the call's guard; a cancellation of the awaiting task sets the
    guard's flag, and this returns only once the thread has stopped."""

    def work():
        token = _call.set(call)
        try:
            with guarded(call.guard):
                return fn()
        finally:
            _call.reset(token)

    outcome: dict = {}
    finished = anyio.Event()
    async with anyio.create_task_group() as watcher:
        watcher.start_soon(_watch, call, finished)
        try:
            # Not abandoned on cancel: the thread holds the model until it sees the flag and stops.
            outcome["result"] = await anyio.to_thread.run_sync(work, limiter=limiter)
        except Exception as error:  # raised below: the task group would wrap it in an ExceptionGroup
            outcome["error"] = error
        finally:
            finished.set()
            watcher.cancel_scope.cancel()
            if call.cancelled_at is not None:
                log.info("%s stopped %.2f s after it was cancelled", call.tool, time.monotonic() - call.cancelled_at)
    if "error" in outcome:
        raise outcome["error"]
    await _send_progress(call)  # the last count (done = total), if the work ended between two reports
    return outcome["result"]
