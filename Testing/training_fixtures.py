"""Tiny real image files for the training tests: smooth blob phantoms written as NIfTI/NRRD."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def phantom(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A few bright ellipsoids on a dark background (CT-like intensities)."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    image = np.full(shape, -1000.0, np.float32)
    for _ in range(4):
        centre = rng.uniform(-0.5, 0.5, len(shape))
        radius = rng.uniform(0.2, 0.45)
        inside = sum((a - c) ** 2 for a, c in zip(axes, centre)) < radius ** 2
        image[inside] += rng.uniform(300, 1500)
    return image


def write_phantoms(folder: Path, shape: tuple[int, ...], count: int, suffix: str = ".nii.gz",
                   spacing: tuple[float, ...] | None = None) -> list[Path]:
    """Write ``count`` phantoms of array ``shape`` into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = sitk.GetImageFromArray(phantom(shape, i))
        if spacing is not None:
            image.SetSpacing(spacing)
        path = folder / f"volume{i}{suffix}"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths
