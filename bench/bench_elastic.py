"""Diffusion-only DRDM augmentation of a 128^3 volume with a 7-label map (label-safe warp), against
MONAI's ``Rand3DElasticd`` (image bilinear, labels nearest) on the same arrays, measured side by side
in one process (imports excluded), one sample per call.

DRDM: ``augment.generate`` with no model (random forward field at depth ``--depth`` on the 128^3
working grid, image warped linearly, labels warped label-safe: one-hot-linear-then-argmax, every
label kept). MONAI: a dense random offset field smoothed by a Gaussian (sigma 5-8 voxels, magnitude
100-200), the usual 3D elastic setting.

    PYTHONPATH=.:bench python bench/bench_elastic.py [--size 128] [--depth 32] [--repeats 3]
"""
from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk
import torch
from timing import machine, measure, row

from drdm_engine.io.read import Labels
from drdm_engine.warp.case import generate

LABELS = 7


def volume(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like float image (HU) and a uint8 label map with ``LABELS`` nested/adjacent blobs, ``(z, y, x)``."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij")
    labels = np.zeros((size,) * 3, np.uint8)
    for value in range(1, LABELS + 1):
        centre = rng.uniform(-0.5, 0.5, 3)
        radius = rng.uniform(0.1, 0.3)
        labels[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius ** 2] = value
    image = (labels.astype(np.float32) * 60 - 1000 * (x ** 2 + y ** 2 > 0.8) + rng.normal(0, 20, labels.shape))
    return image.astype(np.float32), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from monai.transforms import Rand3DElasticd

    array, label_array = volume(args.size)
    image, label_image = sitk.GetImageFromArray(array), sitk.GetImageFromArray(label_array)
    labels = Labels(label_image, names={v: f"structure {v}" for v in range(1, LABELS + 1)})
    elastic = Rand3DElasticd(keys=("image", "label"), sigma_range=(5, 8), magnitude_range=(100, 200), prob=1.0,
                             mode=("bilinear", "nearest"), padding_mode="border")
    elastic.set_random_state(0)
    data = {"image": torch.from_numpy(array)[None], "label": torch.from_numpy(label_array)[None]}
    seeds = iter(range(10 ** 6))

    def drdm() -> None:
        for case in generate(image, labels, None, 1, args.depth, next(seeds), size=args.size):
            assert case.labels is not None

    def monai() -> None:
        out = elastic(data)
        assert out["label"].shape == data["label"].shape

    print(machine())
    print(f"{args.size}^3 image + {LABELS}-label map, one sample per call, {args.repeats} repeats round-robin (median)")
    drdm()
    monai()
    times = measure({"MONAI Rand3DElasticd (labels nearest)": monai,
                     f"DRDM diffusion only, depth {args.depth} (labels label-safe)": drdm}, args.repeats)
    baseline = times["MONAI Rand3DElasticd (labels nearest)"][0]
    for label, (seconds, spread) in times.items():
        print(row(label, seconds, spread, baseline))


if __name__ == "__main__":
    main()
