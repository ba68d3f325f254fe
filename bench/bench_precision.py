"""bf16 autocast of the network against fp32, side by side in one run: time per full sample and the
quality of what comes out (the documented equivalence behind ``--precision auto``).

2D: the published cardiac checkpoint, the parity image diffused to T0 = 48, the full published
recovery (80 steps, zeros padding) in fp32 and in bf16; the recovered fields are compared (voxels) and
so are their quality figures. 3D: time per network step at 64³ (seeded weights; no trained 3D model
exists, so only the per-step output difference is reported there).

    PYTHONPATH=.:bench python bench/bench_precision.py [--steps 80] [--case3d 3d64]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from bench_sampling import _field, _model_and_image
from timing import machine, measure, row

from drdm_engine.core import fields
from drdm_engine.model import sampler


def _timed(work):
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def _summary(field: torch.Tensor) -> str:
    magnitude = field.norm(dim=1)
    return (f"folding {100 * float(fields.folding_fraction(field).mean()):.3f} %, mean |u| "
            f"{float(magnitude.mean()):.3f} vox, p99 |u| {float(magnitude.flatten().quantile(0.99)):.3f} vox")


def compare_2d(steps: int) -> None:
    model, image = _model_and_image("2d256")
    start = _field(48, 2, 256, 1, fields.power)
    fp32 = sampler.RecoverySettings(compose_padding="zeros")
    bf16 = replace(fp32, autocast=torch.bfloat16)
    schedule = range(79, 79 - steps, -1)
    exact, t_exact = _timed(lambda: sampler.recover(model, image, start, schedule, fp32))
    reduced, t_reduced = _timed(lambda: sampler.recover(model, image, start, schedule, bf16))
    print(f"2D 256², published checkpoint, T0 = 48, {steps} recovery steps")
    print(row("full recovery fp32", t_exact, 0.0))
    print(row("full recovery bf16 autocast", t_reduced, 0.0, t_exact))
    batched = sampler.recover(model, image.expand(2, -1, -1, -1), start.expand(2, -1, -1, -1), schedule, fp32)[:1]
    for label, other in (("|bf16 - fp32|", reduced), ("fp32 rounding noise: |2 batched - 1 sample|", batched)):
        difference = (other - exact).norm(dim=1)
        print(f"  {label} field: mean {float(difference.mean()):.3f} vox, p99 "
              f"{float(difference.flatten().quantile(0.99)):.3f} vox, max {float(difference.max()):.3f} vox")
    print(f"  diffused (T0 = 48): {_summary(start)}")
    print(f"  fp32 recovered:     {_summary(exact)}")
    print(f"  bf16 recovered:     {_summary(reduced)}")
    a, b = (sampler.diffuse(image, f, None).flatten() for f in (exact, reduced))
    print(f"  correlation of the recovered images bf16 vs fp32: {float(torch.corrcoef(torch.stack([a, b]))[0, 1]):.5f}")


def compare_3d(case: str, repeats: int) -> None:
    model, image = _model_and_image(case)
    t = torch.tensor([40])

    def run(dtype):
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(image, t).float()

    timed = measure({"fp32": lambda: run(None), "bf16": lambda: run(torch.bfloat16)}, repeats)
    print(f"{case} network step (rec_num 2), {repeats} repeats (median)")
    print(row("network step fp32", *timed["fp32"]))
    print(row("network step bf16 autocast", *timed["bf16"], timed["fp32"][0]))
    exact, reduced = run(None), run(torch.bfloat16)
    print(f"  relative output difference |bf16 - fp32| / |fp32|: "
          f"{float((reduced - exact).norm() / exact.norm()):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--case3d", choices=("3d64", "3d128"), default="3d64")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    compare_2d(args.steps)
    compare_3d(args.case3d, args.repeats)


if __name__ == "__main__":
    main()
