"""MONAI `RandDRDMd` and TorchIO `RandomDRDM` in real pipelines on the (subsampled) chest CT, and how
`RandDRDMd` treats missing keys."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from dataset_fixtures import chest_case

from drdm_engine.io.write import write_displacement_field
from drdm_engine.warp.arrays import deformer

SETTINGS = {"size": 32, "depth": (40, 60)}


@pytest.fixture(scope="module")
def chest_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("chest")
    files = []
    for o in range(2):
        ct, labels = chest_case(o)
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkFloat32), str(root / f"ct{o}.nii.gz"))
        sitk.WriteImage(labels, str(root / f"ct{o}_labels.nii.gz"))
        files.append({"image": str(root / f"ct{o}.nii.gz"), "label": str(root / f"ct{o}_labels.nii.gz")})
    return files


def resampled_by_simpleitk(array: np.ndarray, spacing, field, tmp_path) -> np.ndarray:
    """``array`` (one spatial array) resampled by SimpleITK with ``field`` written as an ITK displacement field."""
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    path = tmp_path / "field.nrrd"
    write_displacement_field(field.lps_mm(), field.grid.input, path)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    return sitk.GetArrayFromImage(sitk.Resample(image, image, transform, sitk.sitkLinear, np.nan))


def only_field(engine):
    return next(reversed(engine.fields.values()))


@pytest.mark.slow
def test_monai_compose_dataloader_workers_and_set_determinism(chest_files, tmp_path):
    pytest.importorskip("monai")
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from monai.utils import set_determinism

    from drdm_engine.transforms.monai import RandDRDMd

    def batches(workers: int) -> list[dict]:
        set_determinism(seed=7)
        transform = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
                             RandDRDMd(keys="image", label_keys="label", prob=1.0, **SETTINGS)])
        loader = DataLoader(Dataset(chest_files, transform), batch_size=1, num_workers=workers)
        return [b for b in loader]

    first, again = batches(2), batches(2)
    set_determinism(seed=None)
    for a, b, files in zip(first, again, chest_files):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        source = LoadImaged(keys=["image", "label"], ensure_channel_first=True)(files)
        assert a["image"].shape[1:] == source["image"].shape
        assert torch.allclose(a["image"].affine[0], source["image"].affine.to(a["image"].affine.dtype))
        assert a["image"].meta["filename_or_obj"][0] == files["image"]
        assert (a["image"][0] - source["image"]).abs().mean() > 5  # HU: deformed
        assert set(torch.unique(a["label"]).tolist()) == set(torch.unique(source["label"]).tolist())
    assert not torch.equal(first[0]["image"][0], first[1]["image"][0][..., :first[0]["image"].shape[-1]])


def test_monai_warp_is_a_simpleitk_resampling_in_mm(chest_files, tmp_path):
    pytest.importorskip("monai")
    from monai.transforms import LoadImaged

    from drdm_engine.transforms.monai import RandDRDMd

    data = LoadImaged(keys=["image", "label"], ensure_channel_first=True)(chest_files[0])
    transform = RandDRDMd(keys="image", label_keys="label", **SETTINGS)
    transform.set_random_state(3)
    out = transform(data)
    assert type(out["image"]).__name__ == "MetaTensor" and torch.equal(out["image"].affine, data["image"].affine)
    spacing = tuple(float(s) for s in data["image"].pixdim[:3])
    field = only_field(deformer(*transform.settings))
    theirs = resampled_by_simpleitk(data["image"][0].numpy(), spacing, field, tmp_path)
    inside = np.isfinite(theirs)
    assert inside.mean() > 0.6
    assert np.abs(out["image"][0].numpy()[inside] - theirs[inside]).mean() < 1e-2


def test_torchio_reproducible_history_and_inverse(chest_files):
    tio = pytest.importorskip("torchio")
    from drdm_engine.transforms.torchio import RandomDRDM

    files = chest_files[0]
    subject = tio.Subject(ct=tio.ScalarImage(files["image"]), seg=tio.LabelMap(files["label"]))
    subject = tio.Blur(std=(12, 12, 20), include=["ct"])(subject)  # smooth: a round trip of two warps keeps it
    subject.clear_history()
    transform = tio.Compose([RandomDRDM(**SETTINGS)])
    torch.manual_seed(1)
    out = transform(subject)
    torch.manual_seed(1)
    assert torch.equal(transform(subject).ct.data, out.ct.data)
    assert torch.equal(out.ct.affine if isinstance(out.ct.affine, torch.Tensor) else torch.tensor(out.ct.affine),
                       torch.tensor(subject.ct.affine)) or np.allclose(out.ct.affine, subject.ct.affine)
    assert out.applied_transforms[0][0] == "DRDMDeformation"
    replay = out.get_composed_history()(subject)
    assert torch.equal(replay.ct.data, out.ct.data) and torch.equal(replay.seg.data, out.seg.data)
    before, after = subject.seg.data, out.seg.data
    assert set(torch.unique(after).tolist()) == set(torch.unique(before).tolist())
    assert out.seg.data.dtype == before.dtype
    back = out.apply_inverse_transform()
    moved = (out.ct.data - subject.ct.data).abs()[0, 4:-4, 4:-4, 3:-3].mean()
    error = (back.ct.data - subject.ct.data).abs()[0, 4:-4, 4:-4, 3:-3].mean()
    assert moved > 20 and error < 0.6 * moved  # two linear warps of a 12 x 12 x 20 mm grid
    agree = (back.seg.data == before)[0, 4:-4, 4:-4, 3:-3].float().mean()
    assert agree > (after == before)[0, 4:-4, 4:-4, 3:-3].float().mean()


def test_a_field_bank_draws_each_case_once():
    from drdm_engine.warp.arrays import Deformer

    engine = Deformer(size=32)
    array = np.random.default_rng(0).normal(size=(20, 24, 16)).astype(np.float32)
    draws = iter(range(100))
    bank = engine.bank(array, (2.0, 2.0, 3.0), 3, lambda: (next(draws), 30))
    assert bank == [(0, 30), (1, 30), (2, 30)]
    assert engine.bank(array, (2.0, 2.0, 3.0), 3, lambda: (next(draws), 30)) == bank
    assert engine.bank(array + 1, (2.0, 2.0, 3.0), 3, lambda: (next(draws), 30))[0] == (3, 30)


def test_inverse_field_inverts_in_simpleitk(tmp_path):
    """phi(psi(x)) = x for the forward field and the numerically inverted one, both as ITK field files."""
    from drdm_engine.warp.arrays import Deformer

    ct, _ = chest_case()
    array, spacing = sitk.GetArrayFromImage(ct).astype(np.float32), tuple(reversed(ct.GetSpacing()))
    engine = Deformer(size=32)
    forward = engine.field(array, spacing, 11, 50)
    transforms = []
    for name, field in (("forward", forward), ("inverse", engine.inverse(forward))):
        path = tmp_path / f"{name}.nrrd"
        write_displacement_field(field.lps_mm(), field.grid.input, path)
        transforms.append(sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64)))
    grid = sitk.GetImageFromArray(array)
    grid.SetSpacing(tuple(reversed(spacing)))
    errors, motion = [], []
    for index in np.random.default_rng(0).integers((4, 4, 3), (28, 28, 14), size=(200, 3)):
        x = np.array(grid.TransformIndexToPhysicalPoint([int(i) for i in index]))
        errors.append(np.linalg.norm(transforms[0].TransformPoint(transforms[1].TransformPoint(tuple(x))) - x))
        motion.append(np.linalg.norm(transforms[0].TransformPoint(tuple(x)) - x))
    assert np.mean(motion) > 3 and np.mean(errors) < 0.05 * np.mean(motion)


def _monai_input():
    pytest.importorskip("monai")
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(size=(1, 16, 16, 8)).astype(np.float32))
    label = torch.zeros((1, 16, 16, 8), dtype=torch.uint8)
    label[0, 4:12, 4:12, 2:6] = 1
    return image, label


def test_monai_transform_raises_key_error_for_a_missing_label_key():
    """Wrong results: RandDRDMd(label_keys="labels") on a dict with key `label` must raise KeyError."""
    image, label = _monai_input()
    from drdm_engine.transforms.monai import RandDRDMd

    transform = RandDRDMd(keys="image", label_keys="labels", size=16, depth=30)
    transform.set_random_state(0)
    with pytest.raises(KeyError):
        out = transform({"image": image, "label": label})
        moved = not torch.equal(out["image"], image)
        pytest.fail(f"no KeyError: image deformed={moved}, label deformed={not torch.equal(out['label'], label)}")


def test_monai_transform_allow_missing_keys_returns_the_dict_unchanged():
    """Wrong results: RandDRDMd(allow_missing_keys=True) with none of its keys present returns the dict."""
    pytest.importorskip("monai")
    from drdm_engine.transforms.monai import RandDRDMd

    transform = RandDRDMd(keys="image", label_keys="label", size=16, depth=30, allow_missing_keys=True)
    transform.set_random_state(0)
    data = {"other": torch.ones(3)}
    out = transform(data)
    assert set(out) == {"other"} and torch.equal(out["other"], data["other"])
