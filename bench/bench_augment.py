"""End to end, as a user runs it: ``drdm augment`` of the bundled chest CT + segmentation, diffusion
only, against the TorchIO script ``torchio_elastic.py`` doing the same job (read, ``--samples`` random
elastic warps of image and labels, write), each a fresh process (imports included), run round-robin.
Wall time and the process's peak RSS (``wait4``); also the imports ``drdm augment`` runs, with the
``train``/``evaluate`` commands registered eagerly (before) and only when asked for (now).

    PYTHONPATH=.:bench python bench/bench_augment.py [--samples 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import machine

ROOT = Path(__file__).resolve().parents[1]
AUGMENT_IMPORTS = ("import drdm_engine.cli.commands as cli; cli.build_parser(with_training={}); "
                   "from drdm_engine.jobs import run")
IMPORTS_BEFORE = "imports of drdm augment, eager (before)"
IMPORTS_AFTER = "imports of drdm augment, lazy training"


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one child process; fails loudly if it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status:
        raise SystemExit(f"{' '.join(command)} failed:\n{child.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as scratch:
        commands = {
            "drdm augment (diffusion only)": lambda k: [python, "-m", "drdm_engine.cli", "augment", "--model", "none",
                                                        "--samples", str(args.samples), "--out", f"{scratch}/drdm{k}"],
            "TorchIO script": lambda k: [python, "bench/torchio_elastic.py", "--samples", str(args.samples),
                                         "--out", f"{scratch}/torchio{k}"],
            IMPORTS_BEFORE: lambda k: [python, "-c", AUGMENT_IMPORTS.format(True)],
            IMPORTS_AFTER: lambda k: [python, "-c", AUGMENT_IMPORTS.format(False)],
        }
        print(machine())
        print(f"bundled chest CT 128 x 128 x 34 + 7-segment labels, {args.samples} samples, "
              f"{args.repeats} repeats round-robin (median), fresh processes")
        results: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
        for k in range(args.repeats):
            for label, command in commands.items():
                results[label].append(run(command(k)))
    baseline = statistics.median(s for s, _ in results["TorchIO script"])
    for label, runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        memory = statistics.median(m for _, m in runs)
        ratio = "" if label.startswith("imports") else f"  x{baseline / seconds:5.2f} vs TorchIO"
        print(f"{label:<32} {seconds:7.2f} s (spread {max(s for s, _ in runs) - min(s for s, _ in runs):.2f})"
              f"  peak RSS {memory:6.0f} MiB{ratio}")
    print(f"load average after the runs: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
