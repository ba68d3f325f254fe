"""Shared helpers of the benches: median timing of repeated calls and a one-line machine description."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


def measure(works: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median and spread (max - min), in seconds, of ``repeats`` calls of each work. The works run
    round-robin, so that load from other processes on a shared CPU hits all of them alike."""
    times: dict[str, list[float]] = {label: [] for label in works}
    for _ in range(repeats):
        for label, work in works.items():
            start = time.perf_counter()
            work()
            times[label].append(time.perf_counter() - start)
    return {label: (statistics.median(t), max(t) - min(t)) for label, t in times.items()}


def machine() -> str:
    """CPU model, torch threads, OpenMP wait policy and load average at the time of the call."""
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    load = os.getloadavg()[0]
    return (f"{model}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, load average {load:.1f}")


def row(label: str, seconds: float, spread: float, baseline: float | None = None) -> str:
    """One printed line: label, median time, spread, and the ratio to ``baseline`` when given."""
    ratio = f"  x{baseline / seconds:6.2f}" if baseline else ""
    return f"{label:<52} {seconds:9.3f} s  (spread {spread:.3f}){ratio}"
