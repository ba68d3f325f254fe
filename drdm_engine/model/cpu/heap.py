"""Keep freed memory in the process while the network runs on the CPU (glibc on Linux): recovery, training.

Each layer of the network allocates its output (a few MB) and frees its input. glibc hands blocks
this size back to the kernel as soon as 2x its (adaptive) mmap threshold lies free at the top of the
heap, so the next layer takes the pages back one page fault and one zeroed page at a time: two chained
2D 10-channel 256^2 convolutions took 3.1 ms instead of 2 x 0.68 ms (``bench/bench_network.py``).
Inside :func:`retained` the heap serves blocks up to 32 MiB and keeps all it frees. ``mallopt`` cannot
switch glibc's adaptation back on, so on leaving, the process keeps the thresholds that adaptation
itself reaches for 32 MiB blocks (mmap 32 MiB, trim 64 MiB) and the free memory goes back to the
kernel at once (``malloc_trim``). The peak stays the same (what is kept is what the network had in
use). Elsewhere (other C libraries) this does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from collections.abc import Iterator
from typing import Protocol

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2 ** 20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
KEEP = 2 ** 31 - 1  # trim threshold inside the block (the largest mallopt takes): nothing is trimmed
AFTER = 2 * MMAP_THRESHOLD  # trim threshold after the block: glibc's own ratio to the mmap threshold

_lock = threading.Lock()
_depth = 0


class _Device(Protocol):
    type: str


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


def _leave(libc: ctypes.CDLL) -> None:
    """The settings after the last block ends, and the free memory returned."""
    libc.mallopt(M_TRIM_THRESHOLD, AFTER)
    libc.malloc_trim(0)


def _reset_in_forked_child() -> None:
    """A process forked inside a block starts outside any (its parent's blocks are not its own)."""
    global _depth
    if _depth and _LIBC is not None:
        _depth = 0
        _leave(_LIBC)


os.register_at_fork(after_in_child=_reset_in_forked_child)


@contextlib.contextmanager
def retained() -> Iterator[None]:
    """Inside this block freed memory below 32 MiB per block stays in the process for reuse (glibc);
    nested and concurrent blocks share one setting, left when the last one ends."""
    global _depth
    libc = _LIBC
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _leave(libc)


def retained_on(device: _Device) -> contextlib.AbstractContextManager:
    """:func:`retained` for work on the CPU, nothing for other devices (``device.type``)."""
    return retained() if device.type == "cpu" else contextlib.nullcontext()
