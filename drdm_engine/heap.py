"""Keep freed memory in the process while the network runs on the CPU (glibc on Linux): recovery, training.

Each layer of the network allocates its output (a few MB) and frees its input. glibc hands blocks
this size back to the kernel as soon as 2x its (adaptive) mmap threshold lies free at the top of the
heap, so the next layer takes the pages back one page fault and one zeroed page at a time: two chained
2D 10-channel 256^2 convolutions took 3.1 ms instead of 2 x 0.68 ms (``bench/bench_network.py``).
Inside :func:`retained` the heap serves blocks up to 32 MiB and keeps what is freed; on leaving, glibc's
default trimming comes back and the free memory is returned (``malloc_trim``). The peak stays the same
(what is kept is what the network had in use). Elsewhere (other C libraries) this does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import platform
import threading
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
DEFAULT_TRIM_THRESHOLD = 128 * 1024  # glibc's default
MMAP_THRESHOLD = 32 * 2 ** 20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
KEEP = 2 ** 62  # trim threshold while retained: never trim

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (with ``mallopt`` and ``malloc_trim``), else None."""
    if platform.system() != "Linux":
        return None
    libc = ctypes.CDLL(None)
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


_LIBC = _glibc()


def _set_trim_threshold(libc: ctypes.CDLL, value: int) -> None:
    libc.mallopt(M_TRIM_THRESHOLD, min(value, 2 ** 31 - 1))


@contextlib.contextmanager
def retained() -> Iterator[None]:
    """Inside this block freed memory below 32 MiB per block stays in the process for reuse (glibc);
    nested and concurrent blocks share one setting, restored when the last one ends."""
    global _depth
    libc = _LIBC
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            _set_trim_threshold(libc, KEEP)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set_trim_threshold(libc, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
