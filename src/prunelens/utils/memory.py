"""Allocator tuning for long CPU loops over large activations.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB, then adjusted dynamically) with fresh
``mmap`` pages and returns them to the system on free, so a loop that allocates and frees the same
tens-of-megabytes activations every step pays page faults and zeroing each time. Inside
:func:`reuse_freed_memory` freed blocks stay in the heap and are reused, which speeds up the element-wise
parts of a transformer block (SiLU, products) and a whole block forward (benchmarks/README.md,
§ Measurements behind choices in the code). The process keeps its peak heap until the context ends, when
the defaults are restored and the free memory is handed back (``malloc_trim``). Elsewhere than glibc it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT = 128 * 1024


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def reuse_freed_memory(limit: int = 1 << 30) -> Iterator[bool]:
    """Keep freed blocks up to ``limit`` bytes in the heap for reuse; yields whether the tuning applied."""
    libc = _libc()
    ok = bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, limit) and libc.mallopt(_M_TRIM_THRESHOLD, limit))
    try:
        yield ok
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT)
            libc.malloc_trim(0)
