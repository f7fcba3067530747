"""Keeping freed memory in the process, so repeated caching does not pay for fresh pages.

run_with_cache of every hook retains ~50 MB per layer for 8 x 128 tokens of a small model. When
the cache is dropped, glibc returns those pages to the OS, and the next call faults them in again;
on CPU that page-fault cost, not compute, made caching ~2x slower than a forward (bench/).
Raising glibc's trim threshold keeps the freed pages for reuse: the process's resident memory
stays at its high-water mark instead of shrinking after `del cache`.
Set LENS_KEEP_FREED_MEMORY=0 to leave the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper bound on 64-bit: larger blocks are always mmapped


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed heap memory for reuse (once per process). True if it was applied."""
    if os.environ.get("LENS_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, ...): nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
