"""Freed memory kept in the process while recovery runs (glibc), given back afterwards. Checked in a
fresh interpreter (a known heap): page faults of allocating, touching and freeing blocks again, and the
resident memory after the block."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from drdm_engine.model.cpu import heap

CHURN = textwrap.dedent("""
    import ctypes, json, os, resource
    from drdm_engine.model.cpu import heap
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    MIB = 2 ** 20

    def faults_of_a_second_churn(block):
        counts = []
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            blocks = [libc.malloc(block) for _ in range(4)]
            for b in blocks:
                ctypes.memset(b, 1, block)
            for b in blocks:
                libc.free(b)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return counts[1]

    def resident_mib():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB

    result = dict(outside=faults_of_a_second_churn(8 * MIB))
    with heap.retained():
        with heap.retained():  # nested blocks share one setting
            result["nested"] = faults_of_a_second_churn(8 * MIB)
        result["inside"] = faults_of_a_second_churn(8 * MIB)
        result["resident_inside"] = resident_mib()
        reader, writer = os.pipe()
        if os.fork() == 0:
            os.write(writer, str(heap._depth).encode())
            os._exit(0)
        os.wait()
        result["child_depth"] = int(os.read(reader, 16))
    result["resident_after"] = resident_mib()
    result["after_large"] = faults_of_a_second_churn(24 * MIB)
    print(json.dumps(result))
""")


def test_freed_blocks_stay_in_the_process_while_retained_and_go_back_after():
    if heap._LIBC is None:
        pytest.skip("needs glibc")
    result = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True)
    got = json.loads(result.stdout)
    pages = 4 * 8 * 2 ** 20 // 4096
    assert got["outside"] >= pages // 2  # glibc's default: the 32 MiB go back to the kernel each time
    assert got["nested"] < pages // 20 and got["inside"] < pages // 20
    assert got["child_depth"] == 0  # a process forked inside a block starts outside it
    assert got["resident_inside"] - got["resident_after"] >= 24  # MiB given back when the block ends
    assert got["after_large"] >= 3 * pages // 2  # 96 MiB free: past the 64 MiB trim threshold left behind


def test_retained_is_harmless_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_LIBC", None)
    with heap.retained():
        assert heap._depth == 0  # no bookkeeping, no C library call


def test_retained_on_other_devices_does_nothing(monkeypatch):
    entered = []
    monkeypatch.setattr(heap, "retained", lambda: entered.append(True) or heap.contextlib.nullcontext())

    class Device:
        def __init__(self, kind: str):
            self.type = kind

    with heap.retained_on(Device("cuda")):
        pass
    with heap.retained_on(Device("cpu")):
        pass
    assert entered == [True]
