"""A guard a caller can put around lens work: cooperative cancellation and a memory limit.

A server runs analyses for clients that cancel them or ask for more than fits. Rather than a flag
on every function, the caller opens `guarded(Guard(...))` around the work (a context variable, so
it holds for this thread alone) and lens checks it where the work happens:

- every transformer block of every forward checks the cancel flag, so sweeps, generation, steering
  and analyses stop within one block's time, raising `Cancelled`;
- every forward states the memory it is about to materialise (activations, attention patterns, the
  KV cache, what run_with_cache keeps: lens.memory estimates them from the shapes) before it
  allocates, and the guard refuses what is over its limit with the figure and how to shrink it
  (`MemoryBudgetError`); the patching engine sizes its batches to the limit.

Without a guard (plain Python use) nothing is checked and nothing costs.

    guard = Guard(max_bytes=2**30)
    with guarded(guard):
        patching.patch(model, ...)   # another thread may call guard.cancel() to stop it
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from lens.errors import Cancelled, MemoryBudgetError


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@dataclass
class Guard:
    """max_bytes: the most one call may materialise at once (None: no limit). reserve(nbytes, what):
    called after the limit check, e.g. to take the bytes from a pool that concurrent calls share;
    it raises when they cannot be had now. limit_name names the limit in refusals."""

    max_bytes: int | None = None
    reserve: Callable[[int, str], None] | None = None
    limit_name: str = "the memory limit"
    _flag: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the work to stop (thread-safe); it raises Cancelled at its next check."""
        self.reason = reason
        self._flag.set()

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set()

    def check(self) -> None:
        if self._flag.is_set():
            raise Cancelled(self.reason)

    def require(self, nbytes: int, what: str, shrink: str) -> None:
        """Refuse `what` if its nbytes exceed the limit, saying by how much and how to shrink it."""
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise MemoryBudgetError(f"{what} would materialise about {mib(nbytes)}, more than {self.limit_name} "
                                    f"of {mib(self.max_bytes)}. To fit: {shrink}.")
        if self.reserve is not None:
            self.reserve(nbytes, what)


_current: ContextVar[Guard | None] = ContextVar("lens_guard", default=None)


@contextmanager
def guarded(guard: Guard) -> Iterator[Guard]:
    token = _current.set(guard)
    try:
        yield guard
    finally:
        _current.reset(token)


def current() -> Guard | None:
    return _current.get()


def check_cancelled() -> None:
    """Raise Cancelled if the work under way was asked to stop (cheap: called at every block)."""
    guard = _current.get()
    if guard is not None and guard._flag.is_set():
        raise Cancelled(guard.reason)


def require(nbytes: int, what: str, shrink: str) -> None:
    guard = _current.get()
    if guard is not None:
        guard.require(nbytes, what, shrink)


def limit(default: int) -> int:
    """The bytes one batch of work may use: the guard's limit when it is tighter than `default`."""
    guard = _current.get()
    return default if guard is None or guard.max_bytes is None else min(default, guard.max_bytes)
