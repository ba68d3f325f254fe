"""Peak memory of `drdm augment` on a large CT-like volume at full resolution (default 512 x 512 x 300,
int16, with a 2-label map), diffusion-only, in a fresh child process; printed against the size of one
full-size float32 copy of the image and against a child that only imports the engine and torch
(peaks read from the children's own ``/proc/self/status``: Linux).

    PYTHONPATH=. python bench/bench_large_volume.py [--size 512 512 300] [--samples 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_case(folder: Path, size: tuple[int, int, int]) -> tuple[Path, Path]:
    """An ellipsoid 'body' (40 HU, noise 20) in air, with a second structure, spacing 0.7 x 0.7 x 1 mm."""
    nx, ny, nz = size
    z, y, x = np.ogrid[:nz, :ny, :nx]
    body = ((x - nx / 2) / (0.4 * nx)) ** 2 + ((y - ny / 2) / (0.35 * ny)) ** 2 + ((z - nz / 2) / (0.47 * nz)) ** 2 < 1
    organ = ((x - 0.4 * nx) / (0.1 * nx)) ** 2 + ((y - ny / 2) / (0.12 * ny)) ** 2 + ((z - nz / 2) / (0.17 * nz)) ** 2 < 1
    noise = np.random.default_rng(0).normal(0, 20, body.shape).astype(np.int16)
    image = np.where(body, 40, -1000).astype(np.int16) + noise
    labels = body.astype(np.uint8) + organ.astype(np.uint8) * body
    paths = folder / "ct.nrrd", folder / "labels.nrrd"
    for array, path in zip((image, labels), paths):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing((0.7, 0.7, 1.0))
        sitk.WriteImage(itk, str(path))
    return paths


PEAK = ("import sys, time\nstarted = time.perf_counter()\n{work}\n"
        "peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(int(peak.split()[1]) / 1024, time.perf_counter() - started)")


def child_peak_mib(work: str, *argv: str) -> tuple[float, float]:
    """Peak RSS (MiB, the child's own VmHWM, Linux) and wall time of a fresh Python child running ``work``."""
    done = subprocess.run([sys.executable, "-c", PEAK.format(work=work), *argv], check=True,
                          capture_output=True, text=True)
    peak, seconds = done.stdout.split()[-2:]
    return float(peak), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        image, labels = write_case(Path(folder), tuple(args.size))
        float_copy = np.prod(args.size) * 4 / 2 ** 20
        base, _ = child_peak_mib("import torch, drdm_engine.jobs.run")
        peak, seconds = child_peak_mib("from drdm_engine.cli.commands import main\nassert main(sys.argv[1:]) == 0",
                                       "augment", str(image), "--labels", str(labels), "--model", "none",
                                       "--samples", str(args.samples), "--out", str(Path(folder) / "out"))
    print(f"{'x'.join(map(str, args.size))} int16 + labels, {args.samples} diffusion-only samples: "
          f"peak RSS {peak:.0f} MiB in {seconds:.0f} s; engine + torch alone {base:.0f} MiB; "
          f"one full-size float32 copy {float_copy:.0f} MiB; "
          f"(peak - imports) = {(peak - base) / float_copy:.2f} float copies")


if __name__ == "__main__":
    main()
