"""Training volumes: find files, map each onto the cubic working grid once, keep them in memory.

A cached volume is ``(1, N^nd)`` float32 in [0, 1] (robust percentiles, then resampled onto the
working grid of :class:`~drdm_engine.core.grid.WorkingGrid`, zero outside the input), exactly as
``drdm augment`` sees an input.

A *volume cache file* (``.pt``, written by :func:`save_cache`, e.g. by ``scripts/build_volume_cache.py``)
holds such volumes already on the working grid as uint8, with their subjects, sources, licences and
which subjects are held out. Reading it needs neither SimpleITK nor the image files (image files are
read through a lazy import of :mod:`drdm_engine.io.read`), so training from a cache runs where SimpleITK is
not installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.errors import DRDMError
from ..core.grid import Geometry, WorkingGrid, to_working
from ..core.intensity import normalise_

CACHE_FORMAT = "drdm-volume-cache"
CACHE_SUFFIX = ".pt"

FORMATS = "NIfTI/NRRD/MHA"


def _is_image(path: Path) -> bool:
    from ..io.formats import IMAGE_SUFFIXES, suffix_of

    return suffix_of(path) in IMAGE_SUFFIXES


def _from_list_file(path: Path, open_lists: tuple[Path, ...]) -> list[Path]:
    """Paths listed one a line (``#`` comments, blank lines ignored), relative to the list file;
    ``open_lists``: the list files being read that led here (a list naming one of them is refused)."""
    if path.resolve() in open_lists:
        chain = " -> ".join(p.name for p in (*open_lists, path.resolve()))
        raise DRDMError(f"list file {path} names itself ({chain}); remove that line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DRDMError(f"cannot read {path}: neither a {FORMATS} image nor a text list of images") from exc
    found = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line) if Path(line).is_absolute() else path.parent / line
        found.extend(_volumes_in([str(entry)], (*open_lists, path.resolve())))
    return found


def _volumes_in(sources: Sequence[str], open_lists: tuple[Path, ...]) -> list[Path]:
    """:func:`find_volumes` inside the list files ``open_lists``."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p))
            if not images:
                raise DRDMError(f"no {FORMATS} volumes found in folder {path}")
            found.extend(images)
        elif path.is_file():
            found.extend([path] if _is_image(path) else _from_list_file(path, open_lists))
        else:
            raise DRDMError(f"data not found: {path}")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise DRDMError(f"no {FORMATS} volumes found in {', '.join(map(str, sources))}")
    return unique


def find_volumes(sources: Sequence[str]) -> list[Path]:
    """Image files named by ``sources`` (folders searched recursively, image files, list files), sorted
    per source, duplicates removed. Segmentations (``.seg.nrrd``) in folders are skipped."""
    return _volumes_in(sources, ())


def volumes_dimension(paths: Sequence[Path]) -> int:
    """The dimension (2 or 3) shared by the image files ``paths``, read from their headers before any
    voxel is; refuses a mix of 2D and 3D (a one-slice 3D volume counts as 2D, as it is deformed)."""
    from ..io.read import inspect_image

    dims: dict[int, Path] = {}
    for path in paths:
        dims.setdefault(inspect_image(path).ndims, path)
    if len(dims) > 1:
        examples = ", ".join(f"{nd}D: {p}" for nd, p in sorted(dims.items()))
        raise DRDMError(f"the data mixes 2D and 3D images ({examples}); give volumes of one dimension at a time")
    return next(iter(dims))


def data_dimension(sources: Sequence[str]) -> int:
    """The dimension (2 or 3) of the volumes ``sources`` name (as ``TrainConfig.data``: a volume cache
    file alone, or folders, files and list files), before any volume is loaded."""
    if len(sources) == 1 and is_cache(sources[0]):
        return read_cache(sources[0])["volumes"].dim() - 2
    return volumes_dimension(find_volumes(sources))


def load_working_volume(path: Path, size: int) -> torch.Tensor:
    """One volume normalised to [0, 1] and resampled onto its working grid: ``(1, size^nd)``."""
    import SimpleITK as sitk

    from ..io.read import read_image

    image = read_image(path)
    grid = WorkingGrid.fit(Geometry.of(image), size)
    array = torch.from_numpy(sitk.GetArrayFromImage(image)).float()[None, None]
    return to_working(normalise_(array), grid)[0]


@dataclass
class VolumeSet:
    """Cached working-grid volumes ``(V, 1, N^nd)`` and the files they came from."""

    volumes: torch.Tensor
    paths: list[Path]
    """Files (or, from a cache file, the volumes' names)."""

    @property
    def ndims(self) -> int:
        return self.volumes.dim() - 2

    def __len__(self) -> int:
        return self.volumes.shape[0]


def load_volumes(paths: Sequence[Path], size: int) -> VolumeSet:
    """Read, normalise and resample every file once; all must have the same dimension (2D or 3D)."""
    volumes_dimension(paths)
    return VolumeSet(torch.stack([load_working_volume(path, size) for path in paths]), list(paths))


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


def is_cache(source: str | Path) -> bool:
    """Whether ``source`` names a volume cache file (an existing ``.pt`` file)."""
    path = Path(source)
    return path.suffix == CACHE_SUFFIX and path.is_file()


def save_cache(path: str | Path, volumes: torch.Tensor, names: Sequence[str], subjects: Sequence[str],
               held_out: Sequence[bool], sources: Sequence[dict]) -> None:
    """Write volumes ``(V, 1, N^nd)`` in [0, 1] as one uint8 cache file, with per volume its name, subject
    and held-out flag, and the list of ``sources`` (file, package, licence)."""
    if not (len(volumes) == len(names) == len(subjects) == len(held_out)):
        raise ValueError("volumes, names, subjects and held_out differ in length")
    payload = {"format": CACHE_FORMAT, "format_version": 1, "size": int(volumes.shape[-1]),
               "ndims": volumes.dim() - 2,
               "volumes": (volumes.clamp(0, 1) * 255).round().to(torch.uint8).contiguous(),
               "names": list(names), "subjects": list(subjects), "held_out": [bool(h) for h in held_out],
               "sources": [dict(s) for s in sources]}
    torch.save(payload, Path(path))


def read_cache(path: str | Path) -> dict:
    """The cache file's payload (``weights_only`` load), its shapes and lengths checked; refuses other
    files and damaged caches with one line."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files
        raise DRDMError(f"cannot read {path} as a volume cache file ({type(exc).__name__}); "
                        f"build one with scripts/build_volume_cache.py") from exc
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        raise DRDMError(f"{path} is not a volume cache file; build one with scripts/build_volume_cache.py")
    problem = _cache_problem(payload)
    if problem:
        raise DRDMError(f"{path} is a damaged volume cache file ({problem}); rebuild it with "
                        f"scripts/build_volume_cache.py")
    return payload


def _cache_problem(payload: dict) -> str | None:
    """What makes a cache payload unusable (``None`` when nothing): volumes ``(V, 1, N^nd)`` uint8 with
    ``nd`` 2 or 3, and one name, subject and held-out flag per volume."""
    volumes = payload.get("volumes")
    if not isinstance(volumes, torch.Tensor) or volumes.dtype != torch.uint8 or volumes.dim() not in (4, 5):
        return "its volumes are not a (V, 1, N, N[, N]) uint8 tensor"
    if volumes.shape[1] != 1 or len(set(volumes.shape[2:])) != 1 or volumes.shape[-1] < 1:
        return f"its volumes have the shape {tuple(volumes.shape)}, not (V, 1, N, N[, N])"
    for key, kind in (("names", str), ("subjects", str), ("held_out", bool)):
        values = payload.get(key)
        if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
            return f"its {key} are not a list of {kind.__name__} values"
        if len(values) != len(volumes):
            return f"it lists {len(values)} {key} for {len(volumes)} volumes"
    return None


def load_cache(path: str | Path, size: int) -> tuple[VolumeSet, VolumeSet]:
    """Training and held-out volumes of a cache file, float32 in [0, 1], resampled (linear) to ``size``
    when the cache holds another side."""
    payload = read_cache(path)
    volumes = payload["volumes"].float() / 255
    if volumes.shape[-1] != size:
        mode = "bilinear" if volumes.dim() == 4 else "trilinear"
        volumes = F.interpolate(volumes, size=(size,) * (volumes.dim() - 2), mode=mode, align_corners=False)
    held = torch.tensor(payload["held_out"], dtype=torch.bool)
    names = [Path(n) for n in payload["names"]]
    train = VolumeSet(volumes[~held], [n for n, h in zip(names, held) if not h])
    if not len(train):
        raise DRDMError(f"{path} holds no training volume (all are held out)")
    return train, VolumeSet(volumes[held], [n for n, h in zip(names, held) if h])
