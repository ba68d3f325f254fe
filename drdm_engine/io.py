"""Medical image I/O with full geometry (SimpleITK), Slicer ``.seg.nrrd`` segment metadata (slicerio),
input validation with one-line errors, and atomic writes.

Inputs are checked from their header before any voxel is read (dimension, pixel type, size), NIfTI
files against the byte count their header announces (a truncated or corrupt ``.nii.gz`` is refused),
and a folder holding one DICOM series is read as a volume.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from .errors import DRDMError
from .geometry import Geometry

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PIXEL_BYTES = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
               sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8}
SCALAR_PIXELS = tuple(PIXEL_BYTES)
FIELD_COMPRESSION_DEFAULT = 0  # measured: gzip level 1 saves 7 % of a field for about 5x the write time
SEGMENTATION_COMPRESSION = 6  # gzip level of .seg.nrrd (zlib's default): measured on the bundled case, 7 ms
# and 27.7 kB per file against slicerio's default 9: 78 ms and 26.2 kB


def suffix_of(path: str | os.PathLike) -> str:
    """Full medical-image suffix (``.nii.gz``, ``.seg.nrrd``, ``.nrrd``, ...), lower case."""
    name = Path(path).name.lower()
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def stem_of(path: str | os.PathLike) -> str:
    """File name without its medical-image suffix (a folder's name for a DICOM folder)."""
    name = Path(path).name
    suffix = suffix_of(path)
    return name[: len(name) - len(suffix)] if suffix and name.lower().endswith(suffix) else Path(path).stem


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


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (voxel offset + voxel data) according to its header; ``None``
    when ``header`` is not a NIfTI header."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = max(352, int(struct.unpack(endian + "f", header[108:112])[0]))
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = max(544, struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return None
    count = int(np.prod([max(1, d) for d in dims[1:1 + max(0, min(7, dims[0]))]]))
    return offset + count * max(1, bitpix) // 8


def check_complete(path: str | os.PathLike, what: str) -> None:
    """Refuse a NIfTI file that holds fewer bytes than its header announces, and a ``.gz`` file whose
    gzip stream is truncated or fails its CRC (ITK would read such files, filling the rest with zeros).
    Reads a compressed file once, in blocks."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz", ".gz")):
        return
    compressed = name.endswith(".gz")
    with open(path, "rb") as handle:
        if compressed and handle.read(2) != b"\x1f\x8b":
            return  # not gzip at all: the reader's own message says it cannot read it
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            header = stream.read(540)
            total = len(header)
            if compressed:
                while block := stream.read(1 << 22):
                    total += len(block)
            else:
                total = path.stat().st_size
    except (EOFError, OSError, zlib.error) as exc:
        raise DRDMError(f"{what} {path} is truncated or corrupt ({exc}); export or download it again") from exc
    expected = _nifti_expected_bytes(header) if ".nii" in name else None
    if expected is not None and total < expected:
        raise DRDMError(f"{what} {path} is truncated: it holds {total} of the {expected} bytes its header "
                        f"announces; export or download it again")


def _read(path: str | os.PathLike, what: str, info: ImageInfo | None = None) -> sitk.Image:
    info = info or inspect_image(path, what)
    try:
        if info.dicom_files:
            return sitk.ReadImage(list(info.dicom_files))
        check_complete(path, what)
        return sitk.ReadImage(str(path))
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
               info: ImageInfo | None = None) -> sitk.Image:
    """Read a scalar 2D or 3D image (file or DICOM folder) with its geometry, cast to ``pixel_type``
    (``None``: keep the file's); refuse 4D, vector, complex, too small, constant and non-finite images
    and truncated files. A one-slice 3D image is returned as 2D unless ``keep_3d`` (then it keeps its
    z origin and full 3D direction)."""
    info = info or inspect_image(path, "image")
    check_image_info(info, path)
    image = _read(path, "image", info)
    if is_single_slice(image) and not keep_3d:
        image = image[:, :, 0]
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


def read_labels(path: str | os.PathLike, reference: sitk.Image, info: ImageInfo | None = None) -> Labels:
    """Read a label map or Slicer ``.seg.nrrd`` (file or DICOM folder) and check it lies on
    ``reference``'s grid (``info``: its header, when already inspected). Any integer label value is
    kept exactly (up to 2**63 - 1)."""
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
    image = _read(path, "labels", info)
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


def atomic_path(path: Path) -> Path:
    """Temporary sibling of ``path`` that keeps its suffix (so writers pick the right format)."""
    return path.with_name(f".tmp{os.getpid()}_{path.name}")


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write atomically: a temporary file in the same folder, then rename. A failed write raises
    ``OSError``."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:  # ITK reports a full disk or an I/O error this way
            raise OSError(errno.EIO, "SimpleITK could not write the file") from exc
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _ascii_placeholders(segments: list[dict]) -> dict[bytes, bytes]:
    """Replace non-ASCII segment names/IDs (pynrrd writes ASCII only) by unique ASCII placeholders, in
    place; returns placeholder -> UTF-8 text."""
    restore: dict[bytes, bytes] = {}
    for index, segment in enumerate(segments):
        for key in ("name", "id"):
            value = segment.get(key)
            if isinstance(value, str) and not value.isascii():
                token = f"drdm-utf8-{index}-{key}"
                restore[token.encode("ascii")] = value.encode("utf-8")
                segment[key] = token
    return restore


def _patch_nrrd_header(path: Path, restore: dict[bytes, bytes]) -> None:
    """Put UTF-8 segment texts back in a pynrrd-written header and drop its date comment (so the same
    run writes the same bytes)."""
    data = path.read_bytes()
    head, sep, body = data.partition(b"\n\n")
    lines = []
    for line in head.split(b"\n"):
        if line.startswith(b"# on "):
            continue
        key, colon, value = line.partition(b":=")
        if colon and value in restore:
            line = key + colon + restore[value]
        lines.append(line)
    path.write_bytes(b"\n".join(lines) + sep + body)


def write_segmentation(labels: sitk.Image, source: Labels, path: str | os.PathLike) -> None:
    """Write a ``.seg.nrrd`` with the source's segment names (UTF-8 kept), colours and terminology,
    atomically."""
    import slicerio

    segmentation = dict(source.segmentation)
    voxels = sitk.GetArrayFromImage(labels)
    segmentation["voxels"] = np.ascontiguousarray(voxels.transpose(tuple(reversed(range(voxels.ndim)))))
    segmentation["segments"] = [{k: v for k, v in s.items() if k != "extent"} for s in segmentation["segments"]]
    restore = _ascii_placeholders(segmentation["segments"])
    segmentation.pop("referenceImageExtentOffset", None)
    path = Path(path)
    tmp = atomic_path(path)
    try:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=SEGMENTATION_COMPRESSION)
        _patch_nrrd_header(tmp, restore)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Write JSON atomically (UTF-8)."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _nrrd_vector(values) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def write_displacement_field(chunks: Iterable[np.ndarray], geometry: Geometry, path: str | os.PathLike,
                             compression: int = FIELD_COMPRESSION_DEFAULT) -> None:
    """Write an ITK displacement field given as consecutive row blocks ``(rows, *shape[1:], nd)`` of
    array axis 0 (LPS mm, float32, array order) as a NRRD, streamed: the full-size field is never
    held; atomic (a wrong block shape or row count raises ``ValueError`` and leaves no file).

    ``compression``: gzip level 1…9, or 0 for raw (uncompressed) data. The gzip header holds no file
    name and no time, so the same field gives the same bytes. The header is the one ITK/SimpleITK
    writes for a vector image (``kinds: vector domain ...``), so ``sitk.ReadImage`` and Slicer read it
    back as a displacement field on ``geometry``'s grid.
    """
    if not 0 <= compression <= 9:
        raise ValueError(f"field compression must be 0 (none) to 9, got {compression}")
    nd = geometry.ndims
    direction = geometry.direction_matrix
    axes = " ".join(_nrrd_vector(direction[:, i] * geometry.spacing[i]) for i in range(nd))
    space = "space: left-posterior-superior" if nd == 3 else "space dimension: 2"
    encoding = "gzip" if compression else "raw"
    header = (f"NRRD0004\ntype: float\ndimension: {nd + 1}\n{space}\n"
              f"sizes: {nd} {' '.join(str(s) for s in geometry.size)}\n"
              f"space directions: none {axes}\nkinds: vector {' '.join(['domain'] * nd)}\n"
              f"endian: little\nencoding: {encoding}\nspace origin: {_nrrd_vector(geometry.origin)}\n\n")
    path = Path(path)
    tmp = atomic_path(path)
    rows = 0
    try:
        with open(tmp, "wb") as handle:
            handle.write(header.encode("ascii"))
            with (gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=compression, mtime=0)
                  if compression else contextlib.nullcontext(handle)) as stream:
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
