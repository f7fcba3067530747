"""Interleaved timing of competing callables, so machine drift hits both sides alike."""

from __future__ import annotations

import statistics
import time

import torch


def compare(fns: dict[str, callable], repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(ts) for name, ts in times.items()}
