"""Giving freed memory back to the system.

glibc keeps freed blocks below its mmap threshold (128 KiB: decoded input chunks, small arrays) in its
heaps, where they stay part of the process's RSS: a worker that dropped its input chunk cache still
looked as large as before. ``malloc_trim(0)`` returns every free page of every heap; elsewhere (macOS,
musl) :func:`release_memory` does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], Any] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """``malloc_trim(0)`` where the C library has it (a few milliseconds for a heap of hundreds of MiB)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
