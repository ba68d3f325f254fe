"""`drdm augment` on awkward inputs and settings: label values beyond 16 bits, one-slice volumes,
unsupported pixel types, UTF-8 segment names, truncated files, NIfTI files holding NaN, DICOM folders,
huge headers, large 2D images, bad settings. Each either works exactly or is one `drdm: error:` line
with exit code 2."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import phantom, refused, rotation, run_cli, samples_of, write_dicom_series

from drdm_engine.core.grid import Geometry
from drdm_engine.io.read import read_labels

FAST = ["--model", "none", "--size", "16", "--depth", "40"]


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def with_labels(tmp_path, array: np.ndarray, name: str = "l.nrrd") -> tuple[Path, Path]:
    image, _ = phantom(size=array.shape[::-1])
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    return write(image, tmp_path / "i.nrrd"), write(labels, tmp_path / name)


@pytest.mark.parametrize("big, dtype", [(70000, np.uint32), (10 ** 10, np.int64), (10 ** 10, np.float64)])
def test_any_integer_label_value_is_kept_exactly(tmp_path, capsys, big, dtype):
    array = np.zeros((12, 14, 16), dtype)
    array[2:10, 3:11, 4:12] = 5
    array[4:8, 5:9, 6:10] = big
    image_path, labels_path = with_labels(tmp_path, array)
    code, err = run_cli(capsys, "augment", image_path, "--labels", labels_path, "--out", tmp_path / "o",
                        "--samples", "2", *FAST)
    assert code == 0, err
    for entry in samples_of(manifest(tmp_path / "o")):
        after = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / entry["labels"])))
        assert set(np.unique(after).tolist()) == {0, 5, big}
        assert np.iinfo(after.dtype).max >= big


def test_negative_label_values_are_kept(tmp_path, capsys):
    array = np.zeros((12, 14, 16), np.int16)
    array[2:10, 3:11, 4:12] = -1
    array[4:8, 5:9, 6:10] = 300
    image_path, labels_path = with_labels(tmp_path, array)
    code, err = run_cli(capsys, "augment", image_path, "--labels", labels_path, "--out", tmp_path / "o",
                        "--samples", "1", *FAST)
    assert code == 0, err
    after = sitk.ReadImage(str(tmp_path / "o" / samples_of(manifest(tmp_path / "o"))[0]["labels"]))
    assert after.GetPixelID() == sitk.sitkInt16 and set(np.unique(sitk.GetArrayFromImage(after))) == {-1, 0, 300}


def test_a_one_slice_volume_stays_3d_with_its_geometry(tmp_path, capsys):
    image, labels = phantom(size=(60, 50, 1), spacing=(0.8, 0.9, 5.0), origin=(-20.0, 30.0, 142.5),
                            direction=rotation(0.4, 0.2, -0.3))
    ip, lp = write(image, tmp_path / "slice.nii.gz"), write(labels, tmp_path / "slice_labels.nii.gz")
    code, err = run_cli(capsys, "augment", ip, "--labels", lp, "--out", tmp_path / "o", "--samples", "1",
                        "--model", "none", "--size", "32", "--depth", "60")
    assert code == 0, err
    entry = samples_of(manifest(tmp_path / "o"))[0]
    for key in ("image", "labels", "field"):
        written = sitk.ReadImage(str(tmp_path / "o" / entry[key]))
        assert written.GetDimension() == 3, key
        assert Geometry.of(written).matches(Geometry.of(image), tol=1e-6), key
    field = sitk.ReadImage(str(tmp_path / "o" / entry["field"]))
    u = sitk.GetArrayFromImage(field).reshape(-1, 3)
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    assert np.abs(u @ normal).max() < 1e-4 and np.linalg.norm(u, axis=1).mean() > 0.1  # in-plane, not zero
    source = sitk.Cast(image, sitk.sitkFloat32)
    theirs = sitk.GetArrayFromImage(sitk.Resample(source, source, sitk.DisplacementFieldTransform(
        sitk.Cast(field, sitk.sitkVectorFloat64)), sitk.sitkLinear, np.nan))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / entry["image"]))).astype(np.float32)
    inside = np.isfinite(theirs)
    assert inside.mean() > 0.5 and np.abs(ours[inside] - theirs[inside]).mean() < 1.0


def test_unsupported_pixel_types_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    complex_image = sitk.GetImageFromArray((rng.normal(size=(8, 9, 10)) + 1j * rng.normal(size=(8, 9, 10)))
                                           .astype(np.complex64))
    for name in ("c.nrrd", "c.nii.gz"):
        refused(capsys, "augment", write(complex_image, tmp_path / name), "--out", tmp_path / "o", *FAST,
                says="pixel type")
    image, labels = phantom(size=(10, 9, 8))
    ip = write(image, tmp_path / "i.nrrd")
    complex_labels = sitk.RealAndImaginaryToComplex(sitk.Cast(labels, sitk.sitkFloat32), sitk.Cast(labels, sitk.sitkFloat32))
    refused(capsys, "augment", ip, "--labels", write(complex_labels, tmp_path / "cl.nrrd"), "--out", tmp_path / "o",
            *FAST, says="pixel type")
    assert not (tmp_path / "o").exists()


def test_utf8_segment_names_and_a_segment_without_colour_are_kept(tmp_path, capsys):
    import slicerio

    image, labels = phantom(size=(20, 18, 16))
    ip = write(image, tmp_path / "i.nrrd")
    path = tmp_path / "s.seg.nrrd"
    voxels = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3], ijk_to_lps[:3, 3] = direction, image.GetOrigin()
    segments = [{"id": "s1", "labelValue": 1, "layer": 0, "name": "body", "color": [0.2, 0.4, 0.6]},
                {"id": "s2", "labelValue": 2, "layer": 0, "name": "tiny 心臓", "color": [0.9, 0.1, 0.1]},
                {"id": "s3", "labelValue": 3, "layer": 0, "name": "Ödem"}]
    slicerio.write_segmentation(str(path), {"voxels": voxels, "ijkToLPS": ijk_to_lps, "segments": [
        {**s, "name": f"placeholder{k}"} for k, s in enumerate(segments)], "encoding": "gzip"})
    data = path.read_bytes()
    for k, segment in enumerate(segments):  # what Slicer writes: UTF-8 in the header
        data = data.replace(f"placeholder{k}".encode(), segment["name"].encode("utf-8"))
    path.write_bytes(data)
    names = {s["name"] for s in read_labels(path, sitk.ReadImage(str(ip))).segmentation["segments"]}
    assert names == {"body", "tiny 心臓", "Ödem"}
    code, err = run_cli(capsys, "augment", ip, "--labels", path, "--out", tmp_path / "o", "--samples", "1", *FAST)
    assert code == 0, err
    entry = samples_of(manifest(tmp_path / "o"))[0]
    written = read_labels(tmp_path / "o" / entry["labels"], sitk.ReadImage(str(ip)))
    assert [s["name"] for s in written.segmentation["segments"]] == ["body", "tiny 心臓", "Ödem"]
    assert "tiny 心臓" in entry["metrics"]["dice"]


@pytest.mark.parametrize("name", ["t.nii.gz", "t.nii"])
def test_truncated_or_corrupt_files_are_refused(tmp_path, capsys, name):
    image, _ = phantom(size=(30, 20, 10))
    data = write(sitk.Cast(image, sitk.sitkFloat32), tmp_path / name).read_bytes()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(data[: len(data) // 2])
    refused(capsys, "augment", cut, "--out", tmp_path / "o", *FAST, says="truncated")
    if name.endswith(".gz"):
        raw = bytearray(gzip.decompress(data))
        raw[len(raw) // 2] ^= 0xFF
        damaged = bytearray(gzip.compress(bytes(raw)))
        damaged[-8:-4] = gzip.compress(gzip.decompress(data))[-8:-4]  # the CRC of the undamaged data
        bad = tmp_path / f"crc_{name}"
        bad.write_bytes(bytes(damaged))
        refused(capsys, "augment", bad, "--out", tmp_path / "o", *FAST, says="truncated or corrupt")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_with_nan_voxels_is_refused(tmp_path, capsys, suffix):
    """A NIfTI holding NaN voxels must be refused (ITK's reader turns NaN into 0)."""
    array = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    array[2, 3, 4] = np.nan
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    refused(capsys, "augment", path, "--out", tmp_path / "out", "--model", "none", "--size", "16", "--samples", "1",
            says="NaN")
    assert not (tmp_path / "out").exists()


def test_labels_without_an_image_are_refused(tmp_path, capsys):
    _, labels_path = with_labels(tmp_path, np.ones((8, 9, 10), np.uint8))
    refused(capsys, "augment", "--labels", labels_path, "--out", tmp_path / "o", says="--labels needs the IMAGE")
    assert not (tmp_path / "o").exists()


def gzip_members(data: bytes) -> list[bytes]:
    """The 10-byte headers of the gzip members in ``data``."""
    headers, start = [], data.find(b"\x1f\x8b\x08")
    while start >= 0:
        headers.append(data[start:start + 10])
        start = data.find(b"\x1f\x8b\x08", start + 1)
    return headers


def test_same_seed_same_bytes_without_names_or_times(tmp_path, capsys):
    import slicerio

    seg = tmp_path / "s.seg.nrrd"
    segmentation = slicerio.read_segmentation(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    image = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))[::4, ::4, ::2]
    write(image, tmp_path / "ct.nrrd")
    segmentation["voxels"] = np.ascontiguousarray(segmentation["voxels"][::4, ::4, ::2])
    segmentation["ijkToLPS"] = segmentation["ijkToLPS"] @ np.diag([4, 4, 2, 1])
    segmentation.pop("referenceImageExtentOffset", None)
    slicerio.write_segmentation(str(seg), segmentation)
    runs = []
    for out, level in (("a", "1"), ("bb", "1"), ("raw", "0")):
        code, err = run_cli(capsys, "augment", tmp_path / "ct.nrrd", "--labels", seg, "--out", tmp_path / out,
                            "--samples", "1", "--seed", "7", "--field-compression", level, *FAST)
        assert code == 0, err
        runs.append({p.name: p.read_bytes() for p in (tmp_path / out).iterdir() if p.name != "manifest.json"})
    assert runs[0] == runs[1]
    name = next(name for name in runs[0] if name.endswith("_field.nrrd"))
    field, labels = runs[0][name], next(data for n, data in runs[0].items() if n.endswith(".seg.nrrd"))
    headers = gzip_members(field)
    assert headers and headers[0][3] & 0x08 == 0 and headers[0][4:8] == b"\0\0\0\0"  # no file name, no time
    assert b"\n# on " not in labels.split(b"\n\n")[0]
    assert b"encoding: raw" in runs[2][name] and len(runs[2][name]) > len(field)
    assert np.array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / out / name))) for out in ("a", "raw")))


def test_a_large_2d_image_gets_a_bounded_preview(tmp_path, capsys, monkeypatch):
    """A 2D image warped in several slabs (as a 2500 x 3000 X-ray is, at 2^22 pixels per slab; here the
    slab and the preview side are scaled down with the image) and previewed subsampled."""
    from drdm_engine.warp import slabs as engine

    monkeypatch.setattr(engine, "SLAB_VOXELS", 1 << 15)
    monkeypatch.setattr(engine, "PREVIEW_SIDE", 128)
    rows, cols = 420, 390
    y, x = np.mgrid[0:rows, 0:cols]
    image = sitk.GetImageFromArray((np.sin(x / 10.0) * np.cos(y / 14.0) * 1000).astype(np.int16))
    image.SetSpacing((0.15, 0.14))
    code, err = run_cli(capsys, "augment", write(image, tmp_path / "xray.nrrd"), "--out", tmp_path / "o",
                        "--samples", "1", "--model", "none", "--size", "64", "--depth", "40")
    assert code == 0, err
    from PIL import Image

    preview = Image.open(tmp_path / "o" / samples_of(manifest(tmp_path / "o"))[0]["preview"])
    assert max(preview.size) <= 2 * 128 * 3 + 100  # two panels of at most 128 pixels, upscaled for display


@pytest.mark.parametrize("setting, fragment", [
    (["--device", "foo"], "not a device"), (["--device", "meta"], "not a device"), (["--device", "mps"], "MPS"),
    (["--size", "1"], "--size must be in"), (["--size", "-8"], "--size must be in"),
    (["--seed", str(2 ** 64)], "--seed must be an integer from 0 to 2**64 - 1"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 2**64 - 1")])
def test_bad_settings_are_one_line(tmp_path, capsys, phantom_files, setting, fragment):
    args = [phantom_files[0], "--out", tmp_path / "o", "--model", "none", *setting]
    if "--size" not in setting:
        args += ["--size", "16"]
    refused(capsys, "augment", *args, says=fragment)
    assert not (tmp_path / "o").exists()


def test_runs_too_large_for_memory_are_refused_before_reading(tmp_path, capsys, phantom_files):
    refused(capsys, "augment", phantom_files[0], "--out", tmp_path / "o", "--samples", 10 ** 6, "--model", "none",
            says="--samples")
    header = tmp_path / "huge.nhdr"  # 1600^3 voxels announced, 16 bytes of data
    (tmp_path / "huge.raw").write_bytes(bytes(16))
    header.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 1600 1600 1600\nspace: left-posterior-superior\n"
                      "space directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\n"
                      "data file: huge.raw\n\n")
    refused(capsys, "augment", header, "--out", tmp_path / "o", "--samples", "1", "--model", "none",
            says=("GiB of memory", "--force-large"))
    assert not (tmp_path / "o").exists()


def test_a_1x1x1_image_is_reported_with_its_size(tmp_path, capsys):
    refused(capsys, "augment", write(sitk.Image([1, 1, 1], sitk.sitkInt16), tmp_path / "dot.nrrd"),
            "--out", tmp_path / "o", *FAST, says="size 1 x 1 x 1")


def test_folders_are_read_as_dicom_series_or_refused_plainly(tmp_path, capsys, phantom_files):
    image, _ = phantom(size=(24, 20, 12), direction=np.eye(3))
    write_dicom_series(image, tmp_path / "series")
    code, err = run_cli(capsys, "augment", tmp_path / "series", "--out", tmp_path / "o", "--samples", "1", *FAST)
    assert code == 0, err
    written = sitk.ReadImage(str(tmp_path / "o" / samples_of(manifest(tmp_path / "o"))[0]["image"]))
    assert Geometry.of(written).matches(Geometry.of(image), tol=1e-4)
    write_dicom_series(image, tmp_path / "series", series=3)
    refused(capsys, "augment", tmp_path / "series", "--out", tmp_path / "o2", *FAST, says="holds 2 DICOM series")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, "augment", empty, "--out", tmp_path / "o2", *FAST, says="is a folder")
    refused(capsys, "augment", phantom_files[0], "--labels", empty, "--out", tmp_path / "o2", *FAST, says="is a folder")
    refused(capsys, "augment", phantom_files[0], "--out", tmp_path / "o2", "--model", empty, says="is a folder")
    assert not (tmp_path / "o2").exists()
