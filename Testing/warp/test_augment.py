"""`drdm augment` end to end on real files: geometry, millimetre fields against SimpleITK, labels, seeds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import phantom, samples_of

from drdm_engine.cli import main
from drdm_engine.core.errors import DRDMError
from drdm_engine.core.grid import Geometry, WorkingGrid, field_to_input_voxels, to_working
from drdm_engine.io.read import read_image, read_labels
from drdm_engine.io.write import write_displacement_field
from drdm_engine.model.precision import recovery_dtype
from drdm_engine.warp.case import generate


def run(tmp_path, image, labels, *extra, out="out"):
    args = [str(image), "--samples", "2", "--depth", "60", "--seed", "3", "--out", str(tmp_path / out),
            "--model", "none", "--size", "64", "--progress-lines", *extra]
    if labels is not None:
        args += ["--labels", str(labels)]
    return main(["augment", *args]), tmp_path / out


@pytest.fixture()
def augmented(tmp_path, phantom_files):
    code, out = run(tmp_path, *phantom_files)
    assert code == 0
    return phantom_files, out, json.loads((out / "manifest.json").read_text())


def test_outputs_keep_the_input_geometry_and_types(augmented):
    (image_path, labels_path), out, manifest = augmented
    source = sitk.ReadImage(str(image_path))
    assert manifest["mode"] == "diffusion-only" and len(samples_of(manifest)) == 2
    for entry in samples_of(manifest):
        for key in ("image", "labels", "field"):
            written = sitk.ReadImage(str(out / entry[key]))
            assert Geometry.of(written).matches(Geometry.of(source), tol=1e-6), key
        assert sitk.ReadImage(str(out / entry["image"])).GetPixelID() == source.GetPixelID()
        assert sitk.ReadImage(str(out / entry["field"])).GetNumberOfComponentsPerPixel() == 3
        assert (out / entry["preview"]).stat().st_size > 1000


def test_exported_field_reproduces_output_with_simpleitk(augmented):
    """The field file, used by SimpleITK's DisplacementFieldTransform to resample the input, gives our output."""
    (image_path, _), out, manifest = augmented
    source = sitk.Cast(sitk.ReadImage(str(image_path)), sitk.sitkFloat32)
    entry = samples_of(manifest)[0]
    field = sitk.Cast(sitk.ReadImage(str(out / entry["field"])), sitk.sitkVectorFloat64)
    u = sitk.GetArrayFromImage(field)
    assert np.linalg.norm(u, axis=-1).mean() > 1.0  # mm: a real deformation, not the identity
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / entry["image"]))).astype(np.float32)
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))
    theirs = sitk.GetArrayFromImage(sitk.Resample(source, source, transform, sitk.sitkLinear, np.nan))
    inside = np.isfinite(theirs)
    assert inside.mean() > 0.7
    assert np.abs(ours[inside] - theirs[inside]).mean() < 1.0  # HU; rounding to int16 is <= 0.5
    assert np.quantile(np.abs(ours[inside] - theirs[inside]), 0.99) < 3.0
    flipped = sitk.GetImageFromArray(-u, isVector=True)
    flipped.CopyInformation(field)
    wrong = sitk.GetArrayFromImage(sitk.Resample(source, source, sitk.DisplacementFieldTransform(flipped),
                                                 sitk.sitkLinear, np.nan))
    both = inside & np.isfinite(wrong)
    assert np.abs(ours[both] - wrong[both]).mean() > 20 * np.abs(ours[both] - theirs[both]).mean()


def test_labels_are_never_new_values_and_every_segment_survives(augmented):
    (_, labels_path), out, manifest = augmented
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path)))
    for entry in samples_of(manifest):
        after = sitk.GetArrayFromImage(sitk.ReadImage(str(out / entry["labels"])))
        assert set(np.unique(after)) == set(np.unique(before))
        assert after.dtype == before.dtype
        assert 0.5 < min(entry["metrics"]["dice"].values()) < 1.0
        metrics = entry["metrics"]
        assert 0 <= metrics["folding_fraction"] <= 1 and metrics["displacement_p99_mm"] >= metrics["displacement_mean_mm"] > 0


def test_a_tiny_segment_is_kept(tmp_path):
    image, labels = phantom()
    array = sitk.GetArrayFromImage(labels)
    array[10, 15, 20] = 9  # a one-voxel structure
    tiny = sitk.GetImageFromArray(array)
    tiny.CopyInformation(labels)
    cases = list(generate(image, read_labels_from(tiny, image, tmp_path), None, 3, 60, 1, size=32))
    assert len(cases) == 3
    for case in cases:
        assert 9 in np.unique(sitk.GetArrayFromImage(case.labels))


def test_samples_are_warped_one_at_a_time():
    """Fields are sampled up front; the full-resolution warps happen as the caller takes each case, so
    a run holds one warped case at a time whatever the number of samples."""
    image, _ = phantom()
    steps = []
    cases = generate(image, None, None, 3, 20, 1, size=32, progress=lambda fraction, text: steps.append(text))
    assert steps[-1] == "sampling deformations"
    first = next(cases)
    assert steps[-1] == "sample 1/3 warped" and first.image.GetSize() == image.GetSize()
    assert len(list(cases)) == 2 and steps[-1] == "sample 3/3 done"
    assert steps[1:] == [f"sample {k}/3 {what}" for k in (1, 2, 3) for what in ("warped", "done")]


def read_labels_from(label_image, image, tmp_path):
    sitk.WriteImage(label_image, str(tmp_path / "l.nrrd"))
    sitk.WriteImage(image, str(tmp_path / "i.nrrd"))
    return read_labels(tmp_path / "l.nrrd", read_image(tmp_path / "i.nrrd", pixel_type=None))


@pytest.mark.slow
def test_same_seed_same_samples_bitwise(tmp_path, phantom_files):
    _, first = run(tmp_path, *phantom_files, out="a")
    _, second = run(tmp_path, *phantom_files, out="b")
    _, third = run(tmp_path, *phantom_files, "--seed", "4", out="c")
    name = samples_of(json.loads((first / "manifest.json").read_text()))[1]["field"]
    a, b, c = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / name))) for d in (first, second, third))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_working_grid_round_trip_on_oblique_anisotropic_volume():
    """A working-grid translation maps back to the same physical translation everywhere on the input grid."""
    image, _ = phantom(size=(50, 21, 13), spacing=(0.7, 1.9, 4.0))
    geometry = Geometry.of(image)
    grid = WorkingGrid.fit(geometry, 32)
    assert grid.spacing == pytest.approx(max(50 * 0.7, 21 * 1.9, 13 * 4.0) / 32)
    working = torch.zeros(1, 3, 32, 32, 32)
    working[:, 0], working[:, 1], working[:, 2] = 1.5, -2.0, 0.5  # working voxels along array axes
    u = field_to_input_voxels(working, grid)[0]
    mm = [u[a] * s for a, s in enumerate(reversed(geometry.spacing))]
    for a, expected in enumerate((1.5, -2.0, 0.5)):
        assert torch.allclose(mm[a], torch.tensor(expected * grid.spacing), atol=1e-4)
    # to_working then back (input -> working -> input) returns the image inside its extent
    x = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32))[None, None]
    fine = WorkingGrid.fit(geometry, 128)
    back = to_working(x, fine)
    maps = fine.input_to_working_index()
    idx = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) * maps[a][0] + maps[a][1]
                           for a, n in enumerate(geometry.shape)], indexing="ij")
    grid_norm = torch.stack([2 * i / 127 - 1 for i in idx[::-1]], -1)[None].float()
    again = torch.nn.functional.grid_sample(back, grid_norm, align_corners=True)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    assert float((again - x)[inner].abs().median()) < 20  # HU, two linear resamplings of a noisy phantom


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 0.7)])
def test_a_cubic_input_of_the_working_size_takes_its_field_without_resampling(monkeypatch, spacing):
    """The working grid of an N^3 isotropic input is the input grid: the field is taken as it is, and
    equals what resampling it onto the same grid gives (to float rounding)."""
    image, _ = phantom(size=(24, 24, 24), spacing=spacing)
    grid = WorkingGrid.fit(Geometry.of(image), 24)
    assert grid.is_input() and not WorkingGrid.fit(Geometry.of(image), 32).is_input()
    assert not WorkingGrid.fit(Geometry.of(phantom(size=(24, 24, 23))[0]), 24).is_input()
    working = torch.randn(1, 3, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    taken = field_to_input_voxels(working, grid, 5, 17)
    assert taken.data_ptr() == working[:, :, 5:17].data_ptr()
    monkeypatch.setattr(WorkingGrid, "is_input", lambda self: False)
    assert torch.allclose(field_to_input_voxels(working, grid, 5, 17), taken, atol=1e-5)


def test_diffusion_only_sampling_never_reads_the_image(monkeypatch, phantom_files):
    """Without a model the random field needs the working grid's size only: the image is not
    normalised or resampled onto the working grid."""
    import drdm_engine.warp.working as working
    monkeypatch.setattr(working, "to_working", lambda *a, **k: pytest.fail("image resampled for diffusion only"))
    image = read_image(phantom_files[0], pixel_type=None)
    composed, _ = working.sample_working(image, None, 2, 30, 1, size=16)
    assert composed.shape == (2, 3, 16, 16, 16) and bool(composed.abs().max() > 0)


@pytest.mark.slow
def test_2d_augment_with_the_imported_published_model(tmp_path, reference, capsys):
    model = tmp_path / "cmr.pt"
    assert main(["import-checkpoint", str(reference / "drdm_cmr_2d_published.pth"), str(model), "--size", "256",
                 "--compose-padding", "zeros"]) == 0
    assert main(["import-checkpoint", str(reference / "drdm_cmr_2d_published.pth"), str(model), "--size", "256"]) == 2
    slice_path = reference / "cmr_slice_256.nii.gz"
    code = main(["augment", str(slice_path), "--model", str(model), "--samples", "2", "--depth", "3",
                 "--recovery", "from-depth", "--out", str(tmp_path / "o")])
    assert code == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["mode"] == "drdm" and manifest["model"]["meta"]["ndims"] == 2
    expected = "bf16 autocast" if recovery_dtype("auto", torch.device("cpu")) else "fp32"
    assert manifest["settings"]["network_precision"] == expected
    assert "recovery step 4/4" in capsys.readouterr().err  # from depth 3: steps 3, 2, 1, 0
    source = sitk.ReadImage(str(slice_path))
    for entry in samples_of(manifest):
        out = sitk.ReadImage(str(tmp_path / "o" / entry["image"]))
        assert out.GetDimension() == 2 and Geometry.of(out).matches(Geometry.of(source))
        assert sitk.ReadImage(str(tmp_path / "o" / entry["field"])).GetNumberOfComponentsPerPixel() == 2


def test_field_writer_streams_row_blocks_and_refuses_wrong_ones(tmp_path):
    image, _ = phantom()
    geometry = Geometry.of(image)
    field = np.random.default_rng(0).normal(size=(*geometry.shape, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="rows"):
        write_displacement_field([field[:5]], geometry, tmp_path / "short.nrrd")
    with pytest.raises(ValueError, match="block shape"):
        write_displacement_field([field[:, :3]], geometry, tmp_path / "narrow.nrrd")
    assert not any(tmp_path.iterdir())
    write_displacement_field([field[:7], field[7:]], geometry, tmp_path / "f.nrrd")
    back = sitk.ReadImage(str(tmp_path / "f.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(back), field) and Geometry.of(back).matches(geometry)


def test_a_non_finite_field_is_refused_before_anything_is_warped(monkeypatch):
    import drdm_engine.warp.working as working

    real = working.sample_fields

    def broken(*args, **kwargs):
        samples = real(*args, **kwargs)
        samples.composed[0, 0, 0, 0, 0] = float("nan")
        return samples

    monkeypatch.setattr(working, "sample_fields", broken)
    image, _ = phantom()
    with pytest.raises(DRDMError, match="not finite.*--precision fp32"):
        generate(image, None, None, 1, 10, 1, size=32)
