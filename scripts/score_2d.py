"""Score a 2D DRDM model: recovery per t bucket (MRSE, cosine, |q|/|c|) on fixed deformations, and the
folding of its samples against diffusion-only fields, on held-out slices of a volume cache and/or on
2D image files. Used for the learning-curve comparison and the model cards of issue 10.

    python scripts/score_2d.py --model cmr2d --cache training_data/slices_64.pt --size 256 --every 4
    python scripts/score_2d.py --model runs/proof2d/model.pt --cache training_data/slices_64.pt --foreground 0.05
    python scripts/score_2d.py --model cmr2d --images ../shared/reference/cmr_slice_256.nii.gz --depths 16 32 48

``--amplitude`` scores the model on deformations of another gain than its own (e.g. 2 for a published
import at 64², the deformations our fresh models are trained on).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from drdm_engine.core import fields
from drdm_engine.model.checkpoint import load_checkpoint
from drdm_engine.model.registry import resolve_name
from drdm_engine.model.sampler import RecoverySettings, sample_fields
from drdm_engine.training.data import load_cache, load_volumes
from drdm_engine.training.evaluation import buckets_for, recovery_metrics


def held_out_images(args: argparse.Namespace, size: int) -> torch.Tensor:
    """``(V, 1, size, size)``: every ``--every``-th held-out slice of the cache, then the image files."""
    parts = []
    if args.cache:
        _, held = load_cache(args.cache, size)
        parts.append(held.volumes[::args.every])
    if args.images:
        parts.append(load_volumes([Path(p) for p in args.images], size).volumes)
    return torch.cat(parts)


def folding(net, images: torch.Tensor, schedule, depths, samples: int, padding: str, recovery: str) -> list[dict]:
    """Per depth: % voxels with det J <= 0 and mean |u| (working voxels), DRDM vs diffusion-only."""
    rows = []
    settings = RecoverySettings(schedule=recovery, compose_padding=padding)
    for depth in depths:
        drdm, plain, disp_d, disp_p = [], [], [], []
        for v in range(images.shape[0]):
            drawn = sample_fields(images[v:v + 1], samples, depth, net, schedule, settings,
                                  torch.Generator().manual_seed(1000 * depth + v))
            drdm.append(fields.folding_fraction(drawn.composed))
            plain.append(fields.folding_fraction(drawn.diffused))
            disp_d.append(drawn.composed.norm(dim=1).flatten(1).mean(1))
            disp_p.append(drawn.diffused.norm(dim=1).flatten(1).mean(1))
        rows.append({"depth": depth, "drdm_folding_pct": 100 * float(torch.cat(drdm).mean()),
                     "diffusion_folding_pct": 100 * float(torch.cat(plain).mean()),
                     "drdm_mean_disp_vox": float(torch.cat(disp_d).mean()),
                     "diffusion_mean_disp_vox": float(torch.cat(disp_p).mean())})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint path or bundled name (cmr2d)")
    parser.add_argument("--cache", help="2D volume cache (its held-out slices are scored)")
    parser.add_argument("--images", nargs="*", default=[], help="2D image files to score as well")
    parser.add_argument("--every", type=int, default=1, help="score every k-th held-out slice")
    parser.add_argument("--size", type=int, default=0, help="working side (default: the model's)")
    parser.add_argument("--amplitude", type=float, default=None, help="deformation gain (default: the model's)")
    parser.add_argument("--samples", type=int, default=2, help="deformations per image and bucket")
    parser.add_argument("--depths", type=int, nargs="*", default=[], help="sample depths T0 for folding")
    parser.add_argument("--recovery", default="published", choices=("published", "from-depth"))
    parser.add_argument("--foreground", type=float, default=None,
                        help="also the cosine over the pixels above this normalised intensity (e.g. 0.05)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_checkpoint(resolve_name(args.model), ndims=2)
    size = args.size or model.meta.size
    schedule = model.meta.schedule if args.amplitude is None else replace(model.meta.schedule,
                                                                         amplitude=args.amplitude)
    images = held_out_images(args, size)
    report = {"model": args.model, "size": size, "amplitude": schedule.gain(size), "images": int(images.shape[0]),
              "samples": args.samples,
              "recovery": recovery_metrics(model.net, images, schedule, buckets_for(model.meta.timesteps, 4),
                                           args.samples, seed=0, foreground=args.foreground)}
    if args.depths:
        report["folding"] = folding(model.net, images, schedule, args.depths, 1, model.meta.compose_padding,
                                    args.recovery)
    print(f"{args.model} at {size}^2, gain {report['amplitude']:g}, {report['images']} image(s):")
    for label, m in report["recovery"].items():
        extra = f"  cosine (foreground) {m['cosine_foreground']:.3f}" if "cosine_foreground" in m else ""
        print(f"  {label}: MRSE {m['mrse']:.3f}  cosine {m['cosine']:.3f}  |q|/|c| {m['ratio']:.2f}{extra}")
    for row in report.get("folding", []):
        print(f"  T0={row['depth']}: folding DRDM {row['drdm_folding_pct']:.3f} % vs diffusion-only "
              f"{row['diffusion_folding_pct']:.3f} %; mean |u| {row['drdm_mean_disp_vox']:.2f} vs "
              f"{row['diffusion_mean_disp_vox']:.2f} vox")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
