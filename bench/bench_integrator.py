"""Forward diffusion at 3D 128^3: sequential (published) vs binary-exponentiation integration, and the
diffusion-only field, measured side by side in one run.

    PYTHONPATH=. python bench/bench_integrator.py [--size 128] [--t 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from timing import machine, measure, row

from drdm_engine.core import fields
from drdm_engine.core.diffusion import DiffusionSchedule, forward_fields, random_velocity, steps_full

STATS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "forward_field_stats.json"


def _field(t: int, size: int, integrator, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return forward_fields(torch.tensor([t]), 3, size, DiffusionSchedule(), g, integrator, with_clean=False)[0]


def _statistics(t: int, size: int, seeds: int) -> dict[str, float]:
    """Mean displacement (voxels) and folding fraction of ``seeds`` fast fields."""
    drawn = [_field(t, size, fields.power, seed) for seed in range(seeds)]
    return {"mean_disp_vox": sum(float(f.norm(dim=1).mean()) for f in drawn) / seeds,
            "neg_jacobian_fraction": sum(float(fields.folding_fraction(f)) for f in drawn) / seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--t", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=4, help="fields drawn for the statistics check")
    args = parser.parse_args()
    print(machine())
    n = int(steps_full(torch.tensor([args.t]))[0])
    print(f"3D {args.size}^3, t = {args.t}: {n} compositions of the 64^3 control field")
    times = measure({
        "diffusion-only field, sequential (published)": lambda: _field(args.t, args.size, fields.power_sequential, 0),
        "diffusion-only field, binary exponentiation": lambda: _field(args.t, args.size, fields.power, 0),
        "  of which one random_velocity draw": lambda: random_velocity(1, 3, DiffusionSchedule(), 4e-5),
    }, args.repeats)
    baseline = times["diffusion-only field, sequential (published)"][0]
    for label, (seconds, spread) in times.items():
        print(row(label, seconds, spread, baseline if "binary" in label else None))
    case = f"3d_{args.size}_t{args.t}"
    published = json.loads(STATS.read_text())["cases"].get(case)
    if published:
        ours = _statistics(args.t, args.size, args.seeds)
        for key, value in ours.items():
            mean, std = published[key]
            print(f"{key:<24} ours {value:.4f}  published {mean:.4f} ± {std:.4f}")


if __name__ == "__main__":
    main()
