"""Giving the memory a step freed back to the operating system.

Arrow's allocator keeps the pages it freed for reuse, and glibc's malloc keeps what it freed inside
its heaps; after a step that held much of it (planning reads the whole source, and the articles of
the published generation), the shards that follow would run on top of it: the process's peak then
grows with the corpus although nothing of it is still in use.

Touches: nothing but this process's allocators.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

import pyarrow as pa


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hand the memory Arrow's pool and malloc hold but no longer use back to the operating system."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
