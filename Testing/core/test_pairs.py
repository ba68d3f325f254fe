"""Registration pairs: SimpleITK resampling of the moving image with the written field reproduces the fixed one."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from dataset_fixtures import chest_case

from drdm_engine.cli import main

pytestmark = pytest.mark.slow  # every test reads the pairs of one `drdm augment --pairs` run


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    ct, labels = chest_case()
    sitk.WriteImage(ct, str(root / "chest.nrrd"))
    sitk.WriteImage(labels, str(root / "chest_labels.nii.gz"))
    out = root / "out"
    assert main(["augment", str(root / "chest.nrrd"), "--labels", str(root / "chest_labels.nii.gz"), "--pairs",
                 "--samples", "3", "--model", "none", "--size", "48", "--depth", "50", "--seed", "2", "--out", str(out),
                 "--progress-lines"]) == 0
    return out, json.loads((out / "pairs.json").read_text())["training"]


def read(out, name, pixel=sitk.sitkFloat32):
    return sitk.Cast(sitk.ReadImage(str(out / name)), pixel)


def transform(out, name):
    return sitk.DisplacementFieldTransform(read(out, name, sitk.sitkVectorFloat64))


def test_datalist_is_read_by_monai(pairs):
    monai_data = pytest.importorskip("monai.data")
    out, entries = pairs
    loaded = monai_data.load_decathlon_datalist(str(out / "pairs.json"), data_list_key="training", base_dir=str(out))
    assert [e["kind"] for e in loaded] == ["original-deformed"] * 3 + ["deformed-deformed"] * 2
    assert all(str(out) in e["moving_image"] and str(out) in e["displacement_field"] for e in loaded)


def test_original_to_deformed_pairs_resample_exactly(pairs):
    out, entries = pairs
    for entry in entries[:3]:
        moving, fixed = read(out, entry["moving_image"]), read(out, entry["fixed_image"])
        field = transform(out, entry["displacement_field"])
        resampled = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, field, sitk.sitkLinear, np.nan))
        inside = np.isfinite(resampled)
        difference = np.abs(resampled[inside] - sitk.GetArrayFromImage(fixed)[inside])
        assert inside.mean() > 0.6 and difference.mean() < 0.5  # HU: int16 rounding
        labels = sitk.Resample(read(out, entry["moving_label"], sitk.sitkUInt8), fixed, field, sitk.sitkNearestNeighbor)
        same = sitk.GetArrayFromImage(labels) == sitk.GetArrayFromImage(read(out, entry["fixed_label"], sitk.sitkUInt8))
        assert same[inside].mean() > 0.97


def test_deformed_to_deformed_field_composes_exactly(pairs):
    """phi_a(x + w(x)) = phi_b(x) at the voxels, checked with SimpleITK transforms; the resampled image
    and labels of sample a match sample b up to a second interpolation."""
    out, entries = pairs
    for entry in entries[3:]:
        a, b = entry["moving_id"], entry["fixed_id"]
        t_a, t_b = transform(out, f"fields/{a}_field.nrrd"), transform(out, f"fields/{b}_field.nrrd")
        t_w = transform(out, entry["displacement_field"])
        fixed = read(out, entry["fixed_image"])
        rng = np.random.default_rng(0)
        errors, naive, moved = [], [], []
        for index in rng.integers(0, fixed.GetSize(), size=(400, 3)):
            x = fixed.TransformIndexToPhysicalPoint([int(i) for i in index])
            y = t_w.TransformPoint(x)
            if not all(1 <= c <= n - 2 for c, n in zip(fixed.TransformPhysicalPointToContinuousIndex(y), fixed.GetSize())):
                continue  # SimpleITK's field is zero outside its grid, ours extends by its border value
            target = np.array(t_b.TransformPoint(x))
            errors.append(np.linalg.norm(t_a.TransformPoint(y) - target))
            u_a, u_b = np.subtract(t_a.TransformPoint(x), x), target - x  # the naive field u_b - u_a, for scale
            naive.append(np.linalg.norm(t_a.TransformPoint(tuple(np.add(x, u_b - u_a))) - target))
            moved.append(np.linalg.norm(target - t_a.TransformPoint(x)))
        errors = np.array(errors)
        assert len(errors) > 100 and np.mean(moved) > 2.0  # mm: the two samples differ
        # SimpleITK interpolates u_a from the (coarse, 12 x 12 x 20 mm) case grid between voxels
        assert errors.mean() < 0.05 * np.mean(moved) and np.quantile(errors, 0.99) < 0.2 * np.mean(moved)
        assert errors.mean() < 0.2 * np.mean(naive)
        assert entry["errors_mm"]["inversion_p99_mm"] < 1e-3 and entry["errors_mm"]["pair_mean_mm"] < 0.5
        assert entry["errors_mm"]["unreachable_fraction"] < 0.01
        original = read(out, entries[0]["moving_image"])
        composite = sitk.CompositeTransform([t_a, t_w])  # pull: w first, then a
        direct = sitk.GetArrayFromImage(sitk.Resample(original, fixed, composite, sitk.sitkLinear, np.nan))
        moving = read(out, entry["moving_image"])
        resampled = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, t_w, sitk.sitkLinear, np.nan))
        inside = np.isfinite(resampled) & np.isfinite(direct)
        target, source = sitk.GetArrayFromImage(fixed)[inside], sitk.GetArrayFromImage(moving)[inside]
        assert np.abs(direct[inside] - target).mean() < 0.15 * np.abs(source - target).mean()
        assert np.abs(resampled[inside] - target).mean() < 0.5 * np.abs(source - target).mean()  # interpolated twice
