"""Reading medical images with full geometry (SimpleITK) and Slicer ``.seg.nrrd`` segment metadata
(slicerio), with input validation in one-line errors.

Inputs are checked from their header before any voxel is read (dimension, pixel type, size), NIfTI
files against the byte count their header announces (a truncated or corrupt ``.nii.gz`` is refused),
and a folder holding one DICOM series is read as a volume.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ..core.errors import DRDMError
from ..core.grid import Geometry
from .formats import suffix_of

PIXEL_BYTES = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
               sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8}
SCALAR_PIXELS = tuple(PIXEL_BYTES)


def dicom_series(path: str | os.PathLike) -> list[str]:
    """Series instance UIDs of the DICOM series directly in folder ``path`` (empty: none)."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


@dataclass(frozen=True)
class ImageInfo:
    """What a header says, before any voxel is read: ``size`` (x, y[, z]), SimpleITK ``pixel_id``,
    components per voxel, and the series' files for a DICOM folder."""

    size: tuple[int, ...]
    pixel_id: int
    components: int
    dicom_files: tuple[str, ...] = ()

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size))

    @property
    def ndims(self) -> int:
        """2 for a 2D image or a one-slice 3D volume (deformed in-plane), else 3."""
        return 2 if len(self.size) == 2 or self.size[2] == 1 else 3

    @property
    def single_slice(self) -> bool:
        """A 3D volume one voxel thick along z (deformed in-plane, written back in 3D)."""
        return len(self.size) == 3 and self.size[2] == 1

    @property
    def bytes_per_voxel(self) -> int:
        """Bytes of one voxel in memory (all components)."""
        return self.components * PIXEL_BYTES.get(self.pixel_id, 8)


def _dicom_files(path: Path, what: str) -> tuple[str, ...]:
    series = dicom_series(path)
    if not series:
        raise DRDMError(f"{what} {path} is a folder, not an image file; give a NIfTI/NRRD/MHA file "
                        f"(or a folder holding one DICOM series)")
    if len(series) > 1:
        raise DRDMError(f"{what} folder {path} holds {len(series)} DICOM series; give a folder with one series "
                        f"(or convert the one you want to NIfTI/NRRD)")
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))


def inspect_image(path: str | os.PathLike, what: str = "image") -> ImageInfo:
    """Header facts of an image file or DICOM folder; refuses what cannot be read."""
    path = Path(path)
    if not path.exists():
        raise DRDMError(f"{what} file not found: {path}")
    files: tuple[str, ...] = ()
    if path.is_dir():
        files = _dicom_files(path, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0] if files else str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        if not files:
            check_complete(path, what)  # a damaged compressed file: say so
        raise DRDMError(f"cannot read {what} {path}: not a readable NIfTI/NRRD/MHA image") from exc
    size = tuple(int(s) for s in reader.GetSize())
    if files:
        size = (*size[:2], len(files))
    return ImageInfo(size, reader.GetPixelID(), reader.GetNumberOfComponents(), files)


NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of real floating-point voxels
BLOCK = 1 << 22  # bytes read, decompressed or scanned at a time


@dataclass(frozen=True)
class NiftiLayout:
    """Where a NIfTI-1/2 file's voxels lie, from its header: ``offset`` (bytes), ``count`` voxels of
    ``bitpix`` bits, and their dtype when they are floats (which can hold NaN/inf)."""

    offset: int
    count: int
    bitpix: int
    floats: np.dtype | None

    @property
    def expected(self) -> int:
        """Bytes the file must hold: voxel offset + voxel data."""
        return self.offset + self.count * max(1, self.bitpix) // 8


def _nifti_layout(header: bytes) -> NiftiLayout | None:
    """The voxel layout a NIfTI-1/2 ``header`` announces; ``None`` when it is not a NIfTI header."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "hh", header[70:74])
            offset = max(352, int(struct.unpack(endian + "f", header[108:112])[0]))
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "hh", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = max(544, struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return None
    count = int(np.prod([max(1, d) for d in dims[1:1 + max(0, min(7, dims[0]))]]))
    floats = np.dtype(endian + NIFTI_FLOATS[datatype]) if datatype in NIFTI_FLOATS else None
    return NiftiLayout(offset, count, bitpix, floats)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _nifti_header(path: Path) -> bytes:
    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") and _is_gzip(path) else open(path, "rb")) as s:
        return s.read(540)


def _decompress(path: Path, what: str, target: Path | None = None) -> int:
    """Decompress the gzip file ``path`` in blocks (into ``target`` when given); returns its uncompressed
    size. A truncated stream or a failed CRC is refused with one line (ITK would read it, filling the rest
    with zeros)."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream, (open(target, "wb") if target else contextlib.nullcontext()) as out:
            while block := stream.read(BLOCK):
                if out is not None:
                    out.write(block)
                total += len(block)
    except (EOFError, zlib.error) as exc:
        raise DRDMError(f"{what} {path} is truncated or corrupt ({exc}); export or download it again") from exc
    except OSError as exc:
        if isinstance(exc, gzip.BadGzipFile) or exc.errno is None:
            raise DRDMError(f"{what} {path} is truncated or corrupt ({exc}); export or download it again") from exc
        raise DRDMError(f"cannot decompress {what} {path} into {target.parent if target else 'memory'}: "
                        f"{exc.strerror or exc}; free some space there") from exc
    return total


def _refuse_short(path: Path, total: int, layout: NiftiLayout | None, what: str) -> None:
    if layout is not None and total < layout.expected:
        raise DRDMError(f"{what} {path} is truncated: it holds {total} of the {layout.expected} bytes its header "
                        f"announces; export or download it again")


def _count_non_finite(path: Path, layout: NiftiLayout) -> int:
    """NaN/inf voxels among the float voxels of an uncompressed NIfTI file, counted block by block."""
    voxels = np.memmap(path, dtype=layout.floats, mode="r", offset=layout.offset, shape=(layout.count,))
    step = BLOCK // layout.floats.itemsize
    return sum(int(np.count_nonzero(~np.isfinite(voxels[i:i + step]))) for i in range(0, layout.count, step))


def check_complete(path: str | os.PathLike, what: str) -> None:
    """Refuse a NIfTI file that holds fewer bytes than its header announces, and a ``.gz`` file whose
    gzip stream is truncated or fails its CRC (read in blocks, nothing kept): why a header could not be read."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz", ".gz")):
        return
    if name.endswith(".gz") and _is_gzip(path):
        _refuse_short(path, _decompress(path, what), _nifti_layout(_nifti_header(path)), what)
    elif ".nii" in name:
        _refuse_short(path, path.stat().st_size, _nifti_layout(_nifti_header(path)), what)


@contextlib.contextmanager
def _checked_nifti(path: Path, what: str, scratch: Path | None) -> Iterator[Path]:
    """The uncompressed NIfTI file ITK should read for ``path`` (a ``.nii.gz`` is decompressed once, into a
    temporary file in ``scratch``, default the system's temporary folder, removed afterwards), checked:
    complete, and without NaN/inf voxels (ITK's NIfTI reader hides them)."""
    layout = _nifti_layout(_nifti_header(path))
    with tempfile.TemporaryDirectory(prefix="drdm-read-", dir=scratch) as folder:
        plain = path
        if path.name.lower().endswith(".gz") and _is_gzip(path):
            plain = Path(folder) / (path.name[:-3] if path.name.lower().endswith(".nii.gz") else path.name + ".nii")
            total = _decompress(path, what, plain)
        else:
            total = path.stat().st_size
        _refuse_short(path, total, layout, what)
        if layout is not None and layout.floats is not None:
            bad = _count_non_finite(plain, layout)
            if bad:
                raise DRDMError(f"{what} {path} has {bad} NaN/inf voxels; fill or mask them before augmenting")
        yield plain


def _read(path: str | os.PathLike, what: str, info: ImageInfo, scratch: Path | None) -> tuple[sitk.Image, bool]:
    """The image, and whether its raw voxels were checked for NaN/inf (NIfTI files, whose reader hides them)."""
    path = Path(path)
    try:
        if info.dicom_files:
            return sitk.ReadImage(list(info.dicom_files)), False
        if ".nii" not in path.name.lower():
            return sitk.ReadImage(str(path)), False
        with _checked_nifti(path, what, scratch) as plain:
            return sitk.ReadImage(str(plain)), True
    except RuntimeError as exc:
        raise DRDMError(f"cannot read {what} {path}: not a readable NIfTI/NRRD/MHA image") from exc


def _size_text(size: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in size)


def check_image_info(info: ImageInfo, path: str | os.PathLike, what: str = "image") -> None:
    """Refuse, from the header, what DRDM cannot deform: not 2D/3D, not scalar, an unsupported pixel
    type (complex, ...), fewer than 2 voxels along an in-plane axis."""
    nd = len(info.size)
    if nd not in (2, 3):
        raise DRDMError(f"{what} {path} is {nd}D; DRDM needs a 2D or 3D image "
                        f"(extract one volume of a time series first)")
    complex_pixel = "complex" in sitk.GetPixelIDValueAsString(info.pixel_id)
    if info.components != 1 and not complex_pixel:
        raise DRDMError(f"{what} {path} has {info.components} components per voxel; give a scalar (grey-level) image")
    if info.pixel_id not in SCALAR_PIXELS:
        kind = sitk.GetPixelIDValueAsString(info.pixel_id)
        raise DRDMError(f"{what} {path} has pixel type '{kind}', which DRDM does not read; give real-valued "
                        f"integer or float voxels (for complex data, save the magnitude first)")
    if min(info.size[:2]) < 2:
        raise DRDMError(f"{what} {path} has size {_size_text(info.size)}; DRDM needs at least 2 voxels along "
                        f"x and y (a single slice, X x Y x 1, is fine)")


def is_single_slice(image: sitk.Image) -> bool:
    """A 3D image one voxel thick along z (deformed in-plane, written back in 3D)."""
    return image.GetDimension() == 3 and image.GetSize()[2] == 1


def read_image(path: str | os.PathLike, pixel_type: int | None = sitk.sitkFloat32, keep_3d: bool = False,
               info: ImageInfo | None = None, scratch: Path | None = None) -> sitk.Image:
    """Read a scalar 2D or 3D image (file or DICOM folder) with its geometry, cast to ``pixel_type``
    (``None``: keep the file's); refuse 4D, vector, complex, too small, constant and non-finite images
    and truncated files. A one-slice 3D image is returned as 2D unless ``keep_3d`` (then it keeps its
    z origin and full 3D direction). ``info``: the header, already inspected and checked
    (:func:`check_image_info`) by the caller. ``scratch``: where a ``.nii.gz`` is decompressed for the
    read (its uncompressed size, removed at once; default: the system's temporary folder)."""
    if info is None:
        info = inspect_image(path, "image")
        check_image_info(info, path)
    image, raw_checked = _read(path, "image", info, scratch)
    if is_single_slice(image) and not keep_3d:
        image = image[:, :, 0]
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and (pixel_type is not None or not raw_checked) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise DRDMError(f"image {path} has {bad} NaN/inf voxels; fill or mask them before augmenting")
    if float(array.max()) == float(array.min()):
        raise DRDMError(f"image {path} is constant ({float(array.min()):g} everywhere); nothing to deform")
    return image


@dataclass
class Labels:
    """A label map aligned with the image, with optional Slicer segment metadata.

    ``image``: integer SimpleITK image (the file's integer type; integer-valued floats become the
    smallest integer type that holds them); ``segmentation``: the slicerio dict of a ``.seg.nrrd``
    (segment names, colours, terminology), or ``None`` for a plain label map.
    """

    image: sitk.Image
    segmentation: dict | None = None
    names: dict[int, str] = field(default_factory=dict)


SEGMENT_TEXT_KEYS = ("Name", "ID")


def _nrrd_header(path: str | os.PathLike) -> bytes:
    """The header of a NRRD file (bytes up to the blank line)."""
    with open(path, "rb") as handle:
        head = b""
        while b"\n\n" not in head:
            block = handle.read(1 << 16)
            if not block:
                break
            head += block
    return head.split(b"\n\n", 1)[0]


def _segment_text_fields(path: str | os.PathLike) -> dict[int, dict[str, str]]:
    """``Segment<i>_Name`` / ``_ID`` of a ``.seg.nrrd`` header decoded as UTF-8 (slicerio/pynrrd drop
    every non-ASCII character)."""
    found: dict[int, dict[str, str]] = {}
    for line in _nrrd_header(path).split(b"\n"):
        key, sep, value = line.partition(b":=")
        if not sep or not key.startswith(b"Segment"):
            continue
        index, _, name = key[len(b"Segment"):].decode("ascii", "replace").partition("_")
        if index.isdigit() and name in SEGMENT_TEXT_KEYS:
            found.setdefault(int(index), {})[name] = value.decode("utf-8", "replace")
    return found


def _read_segmentation(path: Path) -> dict:
    import slicerio

    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:
        raise DRDMError(f"cannot read segmentation {path}: {exc}") from exc
    text = _segment_text_fields(path)
    for segment, index in zip(segmentation["segments"], sorted(text)):
        fields = text[index]
        if "Name" in fields:
            segment["name"] = fields["Name"]
        if "ID" in fields:
            segment["id"] = fields["ID"]
    return segmentation


def _integer_pixel(lo: int, hi: int) -> int:
    """Smallest SimpleITK integer pixel type holding ``lo…hi``."""
    for pixel, dtype in ((sitk.sitkUInt8, np.uint8), (sitk.sitkInt8, np.int8), (sitk.sitkUInt16, np.uint16),
                         (sitk.sitkInt16, np.int16), (sitk.sitkUInt32, np.uint32), (sitk.sitkInt32, np.int32)):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return pixel
    return sitk.sitkInt64


def read_labels(path: str | os.PathLike, reference: sitk.Image, info: ImageInfo | None = None,
                scratch: Path | None = None) -> Labels:
    """Read a label map or Slicer ``.seg.nrrd`` (file or DICOM folder) and check it lies on
    ``reference``'s grid (``info``: its header, when already inspected; ``scratch``: see :func:`read_image`).
    Any integer label value is kept exactly (up to 2**63 - 1)."""
    path = Path(path)
    info = info or inspect_image(path, "labels")
    if info.pixel_id not in SCALAR_PIXELS and "complex" in sitk.GetPixelIDValueAsString(info.pixel_id):
        raise DRDMError(f"labels {path} have pixel type '{sitk.GetPixelIDValueAsString(info.pixel_id)}'; "
                        f"give an integer label map or .seg.nrrd")
    if info.components != 1 and suffix_of(path) != ".seg.nrrd":
        raise DRDMError(f"labels {path} have {info.components} components per voxel; give a single label map")
    if info.pixel_id not in SCALAR_PIXELS and suffix_of(path) != ".seg.nrrd":
        raise DRDMError(f"labels {path} have pixel type '{sitk.GetPixelIDValueAsString(info.pixel_id)}'; "
                        f"give an integer label map or .seg.nrrd")
    segmentation = None
    names: dict[int, str] = {}
    if suffix_of(path) == ".seg.nrrd":
        segmentation = _read_segmentation(path)
        if segmentation["voxels"].ndim != reference.GetDimension():
            raise DRDMError(f"segmentation {path} has overlapping segments in several layers; "
                            f"export it as a label map (one layer) first")
        names = {int(s["labelValue"]): s.get("name", s["id"]) for s in segmentation["segments"]}
    image, _ = _read(path, "labels", info, scratch)
    if image.GetDimension() == 3 and reference.GetDimension() == 2 and image.GetSize()[2] == 1:
        image = image[:, :, 0]
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise DRDMError(f"labels {path} hold non-integer values; give an integer label map or .seg.nrrd")
    lo, hi = array.min(), array.max()
    if hi > np.iinfo(np.int64).max or lo < np.iinfo(np.int64).min:
        raise DRDMError(f"labels {path} hold values beyond the 64-bit signed range; renumber the labels")
    if not Geometry.of(image).matches(Geometry.of(reference)):
        raise DRDMError(f"labels {path} do not lie on the image grid (size/spacing/origin/direction differ: "
                        f"{Geometry.of(image)} vs {Geometry.of(reference)}); resample them onto the image first")
    if array.dtype.kind == "f" or array.dtype == np.uint64:
        image = sitk.Cast(image, _integer_pixel(int(lo), int(hi)))
    Geometry.of(reference).apply_to(image)
    return Labels(image, segmentation, names)
