"""Bad input: one clear line, exit code 2, nothing on disk lost or overwritten."""
from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
from conftest import phantom

from drdm_engine.cli import main


def augment(capsys, *args):
    code = main(["augment", *map(str, args), "--model", "none", "--size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if line.startswith("drdm: error:")]


def expect_error(capsys, fragment, *args):
    code, errors = augment(capsys, *args)
    assert code == 2 and len(errors) == 1 and fragment in errors[0], errors


def write(tmp_path, name, image):
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def test_missing_and_unreadable_files(tmp_path, capsys):
    expect_error(capsys, "not found", tmp_path / "nope.nrrd", "--out", tmp_path / "o")
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"this is not an image")
    expect_error(capsys, "cannot read image", junk, "--out", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_4d_nan_and_constant_images(tmp_path, capsys):
    volume = sitk.GetImageFromArray(np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32))
    four = write(tmp_path, "4d.nii.gz", sitk.JoinSeries([volume] * 3))
    expect_error(capsys, "4D", four, "--out", tmp_path / "o")
    array = np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32)
    array[2, 3, 4] = np.nan
    expect_error(capsys, "NaN", write(tmp_path, "nan.nrrd", sitk.GetImageFromArray(array)), "--out", tmp_path / "o")
    expect_error(capsys, "constant", write(tmp_path, "flat.nrrd", sitk.GetImageFromArray(np.ones((8, 9, 10), np.float32))),
                 "--out", tmp_path / "o")


def test_labels_on_another_grid_or_not_integer(tmp_path, capsys, phantom_files):
    image_path, labels_path = phantom_files
    labels = sitk.ReadImage(str(labels_path))
    moved = sitk.Image(labels)
    moved.SetOrigin(tuple(o + 5 for o in labels.GetOrigin()))
    expect_error(capsys, "do not lie on the image grid", image_path, "--labels", write(tmp_path, "m.nrrd", moved),
                 "--out", tmp_path / "o")
    fractional = sitk.Cast(labels, sitk.sitkFloat32) * 0.5
    expect_error(capsys, "non-integer", image_path, "--labels", write(tmp_path, "f.nrrd", fractional), "--out", tmp_path / "o")


def test_depth_and_samples_out_of_range(tmp_path, capsys, phantom_files):
    image_path, _ = phantom_files
    expect_error(capsys, "--depth must be in 0…79", image_path, "--depth", 80, "--out", tmp_path / "o")
    expect_error(capsys, "--depth must be in 0…79", image_path, "--depth", -1, "--out", tmp_path / "o")
    expect_error(capsys, "--samples must be at least 1", image_path, "--samples", 0, "--out", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unwritable_output_folder(tmp_path, capsys, phantom_files):
    expect_error(capsys, "cannot write to output folder", phantom_files[0], "--out", "/proc/drdm_out")
    if os.geteuid() != 0:  # permission bits do not stop root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        expect_error(capsys, "cannot write to output folder", phantom_files[0], "--out", locked / "o")


def test_output_path_that_cannot_be_a_folder(tmp_path, capsys, phantom_files):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    expect_error(capsys, "cannot write to output folder", phantom_files[0], "--out", blocker / "o")
    expect_error(capsys, "is a file", phantom_files[0], "--out", blocker)
    assert blocker.read_text() == "keep me"


def test_existing_output_is_never_overwritten(tmp_path, capsys, phantom_files):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    expect_error(capsys, "already exists", phantom_files[0], "--out", out, "--samples", 1)
    assert (out / "precious.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    code, _ = augment(capsys, phantom_files[0], "--out", out, "--samples", 1, "--overwrite")
    assert code == 0 and (out / "precious.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_wrong_checkpoint_is_refused(tmp_path, capsys, phantom_files, reference):
    code = main(["augment", str(phantom_files[0]), "--out", str(tmp_path / "o"),
                 "--model", str(reference / "drdm_cmr_2d_published.pth")])
    err = capsys.readouterr().err
    assert code == 2 and "not a DRDM checkpoint" in err and "import-checkpoint" in err
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"\x00garbage")
    assert main(["augment", str(phantom_files[0]), "--out", str(tmp_path / "o"), "--model", str(corrupt)]) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
    two_d = tmp_path / "cmr.pt"
    assert main(["import-checkpoint", str(reference / "drdm_cmr_2d_published.pth"), str(two_d), "--size", "256"]) == 0
    assert main(["augment", str(phantom_files[0]), "--out", str(tmp_path / "o"), "--model", str(two_d)]) == 2
    assert "is 2D but the image is 3D" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
