"""Freed memory kept in the process while recovery runs (glibc), given back afterwards. Checked in a
fresh interpreter (a known heap): page faults of allocating, touching and freeing blocks again."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from drdm_engine import heap

CHURN = textwrap.dedent("""
    import ctypes, json, resource
    from drdm_engine import heap
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    BLOCK = 8 * 2 ** 20

    def faults_of_a_second_churn():
        counts = []
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            blocks = [libc.malloc(BLOCK) for _ in range(4)]
            for block in blocks:
                ctypes.memset(block, 1, BLOCK)
            for block in blocks:
                libc.free(block)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return counts[1]

    outside = faults_of_a_second_churn()
    with heap.retained():
        with heap.retained():  # nested blocks share one setting
            nested = faults_of_a_second_churn()
        inside = faults_of_a_second_churn()
    after = faults_of_a_second_churn()
    print(json.dumps(dict(outside=outside, nested=nested, inside=inside, after=after)))
""")


def test_freed_blocks_stay_in_the_process_while_retained_and_go_back_after():
    if heap._LIBC is None:
        pytest.skip("needs glibc")
    result = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True)
    faults = json.loads(result.stdout)
    pages = 4 * 8 * 2 ** 20 // 4096
    assert faults["outside"] >= pages // 2  # glibc's default: the 32 MiB go back to the kernel each time
    assert faults["nested"] < pages // 20 and faults["inside"] < pages // 20
    assert faults["after"] >= pages // 2


def test_retained_is_harmless_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_LIBC", None)
    with heap.retained():
        pass
