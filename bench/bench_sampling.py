"""Full DRDM samples: the reference path (published way) and the fast paths, measured side by side.

Recovery is timed over ``--steps`` network steps from one starting field and scaled to the schedule's
step count (80 for "published", T0 + 1 for "from-depth"); ``--steps 80`` times the whole loop.

    PYTHONPATH=.:bench python bench/bench_sampling.py --case 2d256 [--steps 4] [--samples 4] [--compile] [--bf16]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from timing import machine, measure, row

from drdm_engine.core import fields
from drdm_engine.core.diffusion import DiffusionSchedule, forward_fields
from drdm_engine.model import sampler
from drdm_engine.model.network import RecResACNet

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
CASES = {"2d256": (2, 256, 48), "3d64": (3, 64, 64), "3d128": (3, 128, 64)}


def _model_and_image(case: str) -> tuple[RecResACNet, torch.Tensor]:
    """The published 2D checkpoint with the parity image, or a seeded 3D model (timing does not
    depend on the weights) with a random volume; image ``(1, 1, *spatial)``."""
    ndims, size, _ = CASES[case]
    if ndims == 2:
        model = RecResACNet(2)
        model.load_state_dict(torch.load(REFERENCE / "drdm_cmr_2d_published.pth", map_location="cpu"), strict=True)
        image = torch.from_numpy(np.load(REFERENCE / "parity_2d_cmr.npz")["image"])[None, None]
        return model.eval(), image
    torch.manual_seed(0)
    return RecResACNet(3).eval(), torch.rand(1, 1, size, size, size)


def _field(depth: int, ndims: int, size: int, samples: int, integrator) -> torch.Tensor:
    t = torch.full((samples,), depth)
    with torch.no_grad():
        return forward_fields(t, ndims, size, DiffusionSchedule(), torch.Generator().manual_seed(0), integrator,
                              with_clean=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="2d256")
    parser.add_argument("--steps", type=int, default=4, help="network steps timed per recovery")
    parser.add_argument("--samples", type=int, default=4, help="batch size of the batched fast path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (and its compile time)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast of the network")
    parser.add_argument("--skip-check", action="store_true", help="skip the fast-vs-reference output comparison")
    args = parser.parse_args()
    ndims, size, depth = CASES[args.case]
    padding = "zeros" if ndims == 2 else "border"
    model, image = _model_and_image(args.case)
    steps = range(79, 79 - args.steps, -1)
    start = _field(depth, ndims, size, 1, fields.power)
    batch_start = _field(depth, ndims, size, args.samples, fields.power)
    batch_image = image.expand(args.samples, *image.shape[1:])
    fast = sampler.RecoverySettings(compose_padding=padding)
    reference = replace(sampler.REFERENCE, compose_padding=padding)
    recoveries = {
        "recovery, reference (no_grad, eager, 1 sample)": lambda: sampler.recover(model, image, start, steps, reference),
        "recovery, fast (fast layers, inference_mode, 1 sample)": lambda: sampler.recover(model, image, start, steps, fast),
        f"recovery, fast, {args.samples} samples batched, per sample":
            lambda: sampler.recover(model, batch_image, batch_start, steps, fast),
    }
    levers = {"bf16": args.bf16, "compile": args.compile}
    variants = {"bf16": replace(fast, autocast=torch.bfloat16), "compile": replace(fast, compile=True)}
    for lever, wanted in levers.items():
        if wanted:
            recoveries[f"recovery, fast + {lever} (1 sample)"] = (
                lambda s=variants[lever]: sampler.recover(model, image, start, steps, s))
    batched_bf16 = f"recovery, fast + bf16, {args.samples} samples batched, per sample"
    if args.bf16:
        recoveries[batched_bf16] = lambda: sampler.recover(model, batch_image, batch_start, steps, variants["bf16"])
    print(machine())
    print(f"{args.case}: depth {depth}, {args.steps} of 80 recovery steps timed, {args.repeats} repeats (median)")
    if args.compile:
        began = time.perf_counter()
        sampler.recover(model, image, start, range(79, 78, -1), variants["compile"])
        print(f"torch.compile: first step incl. compilation {time.perf_counter() - began:.1f} s")
    fields_timed = measure({
        "forward field, sequential (1 sample)": lambda: _field(depth, ndims, size, 1, fields.power_sequential),
        "forward field, binary exponentiation (1 sample)": lambda: _field(depth, ndims, size, 1, fields.power),
        f"forward field, binary exponentiation ({args.samples} samples)":
            lambda: _field(depth, ndims, size, args.samples, fields.power),
    }, args.repeats)
    timed = measure(recoveries, args.repeats)
    for label, (seconds, spread) in fields_timed.items():
        print(row(label, seconds, spread))
    per_step = {label: seconds / args.steps / (args.samples if "batched" in label else 1)
                for label, (seconds, _) in timed.items()}
    base_step = per_step["recovery, reference (no_grad, eager, 1 sample)"]
    for label, (seconds, spread) in timed.items():
        print(row(label + ", per step", per_step[label], spread / args.steps, base_step))
    field_ref = fields_timed["forward field, sequential (1 sample)"][0]
    field_fast = fields_timed["forward field, binary exponentiation (1 sample)"][0]
    field_batch = fields_timed[f"forward field, binary exponentiation ({args.samples} samples)"][0] / args.samples
    totals = {
        "FULL SAMPLE, reference (80 steps)": field_ref + 80 * base_step,
        "FULL SAMPLE, fast (80 steps)": field_fast + 80 * per_step["recovery, fast (fast layers, inference_mode, 1 sample)"],
        f"FULL SAMPLE, fast, {args.samples} batched, per sample (80 steps)":
            field_batch + 80 * per_step[f"recovery, fast, {args.samples} samples batched, per sample"],
        f"FULL SAMPLE, fast, {args.samples} batched, from-depth ({depth + 1} steps)":
            field_batch + (depth + 1) * per_step[f"recovery, fast, {args.samples} samples batched, per sample"],
    }
    if args.bf16:
        totals[f"FULL SAMPLE, fast + bf16, {args.samples} batched, per sample (80 steps)"] = (
            field_batch + 80 * per_step[batched_bf16])
        totals[f"FULL SAMPLE, fast + bf16, {args.samples} batched, from-depth ({depth + 1} steps)"] = (
            field_batch + (depth + 1) * per_step[batched_bf16])
    extrapolated = "" if args.steps == 80 else f" (extrapolated from {args.steps} steps)"
    for label, seconds in totals.items():
        print(row(label + extrapolated, seconds, 0.0, totals["FULL SAMPLE, reference (80 steps)"]))
    if not args.skip_check:
        _print_equivalence(model, image, start, batch_image, batch_start, steps, reference, fast)


def _print_equivalence(model, image, start, batch_image, batch_start, steps, reference, fast) -> None:
    """Max abs difference (voxels) of the recovered fields: fast vs reference, batched vs one at a time."""
    ref = sampler.recover(model, image, start, steps, reference)
    print(f"max |fast - reference| after the timed steps: {(sampler.recover(model, image, start, steps, fast) - ref).abs().max():.2e} vox")
    batched = sampler.recover(model, batch_image, batch_start, steps, fast)
    single = sampler.recover(model, batch_image[:1], batch_start[:1], steps, reference)
    print(f"max |batched - one at a time| (sample 0): {(batched[:1] - single).abs().max():.2e} vox")


if __name__ == "__main__":
    main()
