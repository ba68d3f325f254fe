"""Peak resident memory of one 3D sample on the CPU (max RSS of a fresh subprocess per path).

    PYTHONPATH=.:bench python bench/bench_memory.py [--size 128] [--steps 2]

Each child imports torch, builds the network, draws the forward field at depth 64 and runs ``--steps``
recovery steps (every step allocates the same, so the peak after two steps is the peak of 80).
Paths: ``reference`` (published way), ``fast`` (fp32), ``bf16`` (bf16 autocast, ``--precision auto`` here).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import resource, sys, torch
from dataclasses import replace
from drdm_engine.model import sampler
from drdm_engine.core.diffusion import DiffusionSchedule
from drdm_engine.model.network import RecResACNet
size, steps, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = RecResACNet(3).eval()
image = torch.rand(1, 1, size, size, size)
schedule = DiffusionSchedule(timesteps=steps)
if path == "reference":
    sampler.sample_fields_reference(image, 1, steps - 1, model, schedule, generator=torch.Generator().manual_seed(0))
else:
    settings = sampler.RecoverySettings(autocast=torch.bfloat16 if path == "bf16" else None)
    sampler.sample_fields(image, 1, steps - 1, model, schedule, settings, generator=torch.Generator().manual_seed(0))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_rss_mb(size: int, steps: int, path: str) -> float:
    """Max RSS in MiB of a child process drawing one ``size``^3 sample on ``path``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", CHILD, str(size), str(steps), path], env=env,
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    for path in ("reference", "fast", "bf16"):
        print(f"{args.size}^3 sample, {path} path: peak RSS {peak_rss_mb(args.size, args.steps, path):.0f} MiB "
              f"(limit 2048)")


if __name__ == "__main__":
    main()
