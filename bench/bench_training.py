"""Training throughput (samples/s): our step vs a faithful fp32 published step, same run, same data.

Ours: fast forward integrator (binary exponentiation) and, on CUDA, mixed precision. Published:
sequential composition (``fields.power_sequential``), fp32. Both start from the same weights and
draw the same ``t`` and the same random fields (same seed); one untimed warm-up step each, then
timed steps interleaved so that machine load hits both alike, under the flags ``Trainer.run`` trains
with (``TRAINING_FLAGS``: cuDNN autotuning on CUDA). Data: the chest CT shipped in the slicerio wheel,
unless files are given.

    python bench/bench_training.py --size 64 --steps 3 --threads 1
"""
from __future__ import annotations

import argparse
import tempfile
import time

import slicerio
import torch

from drdm_engine.core import fields
from drdm_engine.core.diffusion import DiffusionSchedule, forward_fields
from drdm_engine.training.backend_flags import TRAINING_FLAGS, backend_flags
from drdm_engine.training.config import TrainConfig
from drdm_engine.training.trainer import Trainer, load_training_data


def timed_step(trainer: Trainer) -> tuple[float, int]:
    """Seconds of one full optimiser step (fields, diffusion, forward, loss, backward, update) and its ``t``."""
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    started = time.perf_counter()
    _, t = trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return time.perf_counter() - started, int(t[0])


def field_seconds(integrator, size: int, device: torch.device, steps=(16, 48, 79)) -> dict[int, float]:
    """Seconds to draw ``(F_full, F_clean)`` at each ``t`` (3D, batch 1) with ``integrator``."""
    out = {}
    for t in steps:
        generator = torch.Generator(device=device).manual_seed(t)
        started = time.perf_counter()
        forward_fields(torch.tensor([t], device=device), 3, size, DiffusionSchedule(), generator, integrator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out[t] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*", help="volumes (default: slicerio CTChest4.nrrd)")
    parser.add_argument("--size", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=3,
                        help="timed steps per variant and size (0: forward-field timing only)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data or [slicerio.get_testdata_file("CTChest4.nrrd")]
    for size in args.size:
        base = dict(data=data, size=size, steps=10 ** 6, batch_size=1, out=tempfile.mkdtemp(prefix="drdm_bench_training_"),
                    progress=False, device=args.device, augment=True, seed=0)
        cached = load_training_data(TrainConfig(**base))
        ours = Trainer(TrainConfig(**base, integrator="fast", amp=True), cached)
        published = Trainer(TrainConfig(**base, integrator="sequential", amp=False), cached)
        for name, integrator in (("fast", fields.power), ("sequential", fields.power_sequential)):
            timing = field_seconds(integrator, size, ours.device)
            print(f"  {size}^3 forward fields ({name}): " + ", ".join(f"t={t} {s:.2f} s" for t, s in timing.items()),
                  flush=True)
        if args.steps == 0:
            continue
        times = {"ours": [], "published": []}
        with backend_flags(TRAINING_FLAGS):
            for trainer in (ours, published):
                timed_step(trainer)  # warm-up (allocator, kernels, cuDNN autotuning), not timed
            for step in range(args.steps):
                for name, trainer in (("ours", ours), ("published", published)):
                    seconds, t = timed_step(trainer)
                    times[name].append(seconds)
                    print(f"  {size}^3 step {step + 1} {name:9s} t={t:2d}: {seconds:7.2f} s", flush=True)
        rate = {name: len(v) / sum(v) for name, v in times.items()}
        print(f"{size}^3 on {ours.device} ({args.threads} thread(s)): ours {rate['ours']:.4f} samples/s, "
              f"published fp32 sequential {rate['published']:.4f} samples/s, "
              f"ratio {rate['ours'] / rate['published']:.2f}x")


if __name__ == "__main__":
    main()
