"""Training volumes: find files, map each onto the cubic working grid once, keep them in memory.

A cached volume is ``(1, N^nd)`` float32 in [0, 1] (robust percentiles, then resampled onto the
working grid of :class:`~drdm_engine.geometry.WorkingGrid`, zero outside the input), exactly as
``drdm augment`` sees an input.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk
import torch

from ..errors import DRDMError
from ..geometry import Geometry, WorkingGrid, to_working
from ..intensity import normalise_
from ..io import IMAGE_SUFFIXES, read_image, suffix_of

FORMATS = "NIfTI/NRRD/MHA"


def _is_image(path: Path) -> bool:
    return suffix_of(path) in IMAGE_SUFFIXES


def _from_list_file(path: Path) -> list[Path]:
    """Paths listed one a line (``#`` comments, blank lines ignored), relative to the list file."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DRDMError(f"cannot read {path}: neither a {FORMATS} image nor a text list of images") from exc
    found = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line) if Path(line).is_absolute() else path.parent / line
        found.extend(find_volumes([str(entry)]))
    return found


def find_volumes(sources: Sequence[str]) -> list[Path]:
    """Image files named by ``sources`` (folders searched recursively, image files, list files), sorted
    per source, duplicates removed. Segmentations (``.seg.nrrd``) in folders are skipped."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p))
            if not images:
                raise DRDMError(f"no {FORMATS} volumes found in folder {path}")
            found.extend(images)
        elif path.is_file():
            found.extend([path] if _is_image(path) else _from_list_file(path))
        else:
            raise DRDMError(f"data not found: {path}")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise DRDMError(f"no {FORMATS} volumes found in {', '.join(map(str, sources))}")
    return unique


def load_working_volume(path: Path, size: int) -> torch.Tensor:
    """One volume normalised to [0, 1] and resampled onto its working grid: ``(1, size^nd)``."""
    image = read_image(path)
    grid = WorkingGrid.fit(Geometry.of(image), size)
    array = torch.from_numpy(sitk.GetArrayFromImage(image)).float()[None, None]
    return to_working(normalise_(array), grid)[0]


@dataclass
class VolumeSet:
    """Cached working-grid volumes ``(V, 1, N^nd)`` and the files they came from."""

    volumes: torch.Tensor
    paths: list[Path]

    @property
    def ndims(self) -> int:
        return self.volumes.dim() - 2

    def __len__(self) -> int:
        return self.volumes.shape[0]


def load_volumes(paths: Sequence[Path], size: int) -> VolumeSet:
    """Read, normalise and resample every file once; all must have the same dimension (2D or 3D)."""
    tensors, dims = [], {}
    for path in paths:
        volume = load_working_volume(path, size)
        dims.setdefault(volume.dim() - 1, path)
        tensors.append(volume)
    if len(dims) > 1:
        examples = ", ".join(f"{nd}D: {p}" for nd, p in sorted(dims.items()))
        raise DRDMError(f"training data mixes 2D and 3D images ({examples}); train one dimension at a time")
    return VolumeSet(torch.stack(tensors), list(paths))


def split_sources(data: Sequence[str], validation: Sequence[str], holdout: int) -> tuple[list[Path], list[Path]]:
    """Training and held-out files: ``validation`` when given, else the last ``holdout`` of ``data``."""
    train = find_volumes(data)
    if validation:
        held = find_volumes(validation)
        train = [p for p in train if p not in set(held)]
    else:
        if holdout >= len(train):
            raise DRDMError(f"holdout {holdout} leaves no training volume out of {len(train)}")
        held = train[len(train) - holdout:] if holdout else []
        train = train[: len(train) - holdout]
    if not train:
        raise DRDMError("every training volume is also a validation volume; give separate data")
    return train, held
