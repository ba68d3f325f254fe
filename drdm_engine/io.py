"""Medical image I/O with full geometry (SimpleITK), Slicer ``.seg.nrrd`` segment metadata (slicerio),
input validation with one-line errors, and atomic writes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from .errors import DRDMError
from .geometry import Geometry

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def suffix_of(path: str | os.PathLike) -> str:
    """Full medical-image suffix (``.nii.gz``, ``.seg.nrrd``, ``.nrrd``, ...), lower case."""
    name = Path(path).name.lower()
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def stem_of(path: str | os.PathLike) -> str:
    """File name without its medical-image suffix."""
    name = Path(path).name
    suffix = suffix_of(path)
    return name[: len(name) - len(suffix)] if suffix and name.lower().endswith(suffix) else Path(path).stem


def _read(path: str | os.PathLike, what: str) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise DRDMError(f"{what} file not found: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DRDMError(f"cannot read {what} {path}: not a readable NIfTI/NRRD/MHA image") from exc


def read_image(path: str | os.PathLike, pixel_type: int | None = sitk.sitkFloat32) -> sitk.Image:
    """Read a scalar 2D or 3D image with its geometry, cast to ``pixel_type`` (``None``: keep the file's);
    refuse 4D, vector, too small, constant and non-finite images."""
    image = _read(path, "image")
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() not in (2, 3):
        raise DRDMError(f"image {path} is {image.GetDimension()}D; DRDM needs a 2D or 3D image "
                        f"(extract one volume of a time series first)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DRDMError(f"image {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                        f"give a scalar (grey-level) image")
    if min(image.GetSize()) < 2:
        raise DRDMError(f"image {path} has size {image.GetSize()}; every axis needs at least 2 voxels")
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise DRDMError(f"image {path} has {bad} NaN/inf voxels; fill or mask them before augmenting")
    if float(array.max()) == float(array.min()):
        raise DRDMError(f"image {path} is constant ({float(array.min()):g} everywhere); nothing to deform")
    return image


@dataclass
class Labels:
    """A label map aligned with the image, with optional Slicer segment metadata.

    ``image``: integer SimpleITK image; ``segmentation``: the slicerio dict of a ``.seg.nrrd``
    (segment names, colours, terminology), or ``None`` for a plain label map.
    """

    image: sitk.Image
    segmentation: dict | None = None
    names: dict[int, str] = field(default_factory=dict)


def read_labels(path: str | os.PathLike, reference: sitk.Image) -> Labels:
    """Read a label map or Slicer ``.seg.nrrd`` and check it lies on ``reference``'s grid."""
    segmentation = None
    names: dict[int, str] = {}
    if suffix_of(path) == ".seg.nrrd":
        import slicerio

        if not Path(path).is_file():
            raise DRDMError(f"labels file not found: {path}")
        try:
            segmentation = slicerio.read_segmentation(str(path))
        except Exception as exc:
            raise DRDMError(f"cannot read segmentation {path}: {exc}") from exc
        if segmentation["voxels"].ndim != reference.GetDimension():
            raise DRDMError(f"segmentation {path} has overlapping segments in several layers; "
                            f"export it as a label map (one layer) first")
        names = {int(s["labelValue"]): s.get("name", s["id"]) for s in segmentation["segments"]}
    image = _read(path, "labels")
    if image.GetDimension() == 3 and reference.GetDimension() == 2 and image.GetSize()[2] == 1:
        image = image[:, :, 0]
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DRDMError(f"labels {path} have {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                        f"give a single label map")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise DRDMError(f"labels {path} hold non-integer values; give an integer label map or .seg.nrrd")
    if array.min() < 0:
        raise DRDMError(f"labels {path} hold negative values; label values must be 0 (background) or positive")
    if not Geometry.of(image).matches(Geometry.of(reference)):
        raise DRDMError(f"labels {path} do not lie on the image grid (size/spacing/origin/direction differ: "
                        f"{Geometry.of(image)} vs {Geometry.of(reference)}); resample them onto the image first")
    image = sitk.Cast(image, sitk.sitkUInt16 if array.max() > 255 else sitk.sitkUInt8)
    Geometry.of(reference).apply_to(image)
    return Labels(image, segmentation, names)


def atomic_path(path: Path) -> Path:
    """Temporary sibling of ``path`` that keeps its suffix (so writers pick the right format)."""
    return path.with_name(f".tmp{os.getpid()}_{path.name}")


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        sitk.WriteImage(image, str(tmp), compress)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_segmentation(labels: sitk.Image, source: Labels, path: str | os.PathLike) -> None:
    """Write a ``.seg.nrrd`` with the source's segment names, colours and terminology, atomically."""
    import slicerio

    segmentation = dict(source.segmentation)
    voxels = sitk.GetArrayFromImage(labels)
    segmentation["voxels"] = np.ascontiguousarray(voxels.transpose(tuple(reversed(range(voxels.ndim)))))
    segmentation["segments"] = [{k: v for k, v in s.items() if k != "extent"} for s in segmentation["segments"]]
    segmentation.pop("referenceImageExtentOffset", None)
    path = Path(path)
    tmp = atomic_path(path)
    try:
        slicerio.write_segmentation(str(tmp), segmentation)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Write JSON atomically."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _nrrd_vector(values) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def write_displacement_field(chunks: Iterable[np.ndarray], geometry: Geometry, path: str | os.PathLike) -> None:
    """Write an ITK displacement field given as consecutive row blocks ``(rows, *shape[1:], nd)`` of
    array axis 0 (LPS mm, float32, array order) as a gzip NRRD, streamed: the full-size field is never
    held; atomic (a wrong block shape or row count raises ``ValueError`` and leaves no file).

    The header is the one ITK/SimpleITK writes for a vector image (``kinds: vector domain ...``), so
    ``sitk.ReadImage`` and Slicer read it back as a displacement field on ``geometry``'s grid.
    """
    import gzip

    nd = geometry.ndims
    direction = geometry.direction_matrix
    axes = " ".join(_nrrd_vector(direction[:, i] * geometry.spacing[i]) for i in range(nd))
    space = "space: left-posterior-superior" if nd == 3 else "space dimension: 2"
    header = (f"NRRD0004\ntype: float\ndimension: {nd + 1}\n{space}\n"
              f"sizes: {nd} {' '.join(str(s) for s in geometry.size)}\n"
              f"space directions: none {axes}\nkinds: vector {' '.join(['domain'] * nd)}\n"
              f"endian: little\nencoding: gzip\nspace origin: {_nrrd_vector(geometry.origin)}\n\n")
    path = Path(path)
    tmp = atomic_path(path)
    rows = 0
    try:
        with open(tmp, "wb") as handle:
            handle.write(header.encode("ascii"))
            with gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=1, mtime=0) as stream:
                for chunk in chunks:
                    if chunk.shape[1:] != (*geometry.shape[1:], nd):
                        raise ValueError(f"field block shape {chunk.shape} does not match the grid "
                                         f"{geometry.shape} x {nd}")
                    rows += chunk.shape[0]
                    stream.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())
        if rows != geometry.shape[0]:
            raise ValueError(f"field blocks hold {rows} rows, the grid has {geometry.shape[0]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
