"""Bad input: one clear line, exit code 2, nothing on disk lost or overwritten; argparse's own errors
worded like every other."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import one_error_line, random_volume, refused, run_cli

from drdm_engine.cli import main

DIFFUSION_ONLY = ["--model", "none", "--size", "32"]


def write(tmp_path, name, image):
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def test_missing_and_unreadable_files(tmp_path, capsys):
    refused(capsys, "augment", tmp_path / "nope.nrrd", "--out", tmp_path / "o", *DIFFUSION_ONLY, says="not found")
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"this is not an image")
    refused(capsys, "augment", junk, "--out", tmp_path / "o", *DIFFUSION_ONLY, says="cannot read image")
    assert not (tmp_path / "o").exists()


def test_4d_nan_and_constant_images(tmp_path, capsys):
    volume = sitk.GetImageFromArray(np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32))
    four = write(tmp_path, "4d.nii.gz", sitk.JoinSeries([volume] * 3))
    refused(capsys, "augment", four, "--out", tmp_path / "o", *DIFFUSION_ONLY, says="4D")
    array = np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32)
    array[2, 3, 4] = np.nan
    refused(capsys, "augment", write(tmp_path, "nan.nrrd", sitk.GetImageFromArray(array)), "--out", tmp_path / "o",
            *DIFFUSION_ONLY, says="NaN")
    refused(capsys, "augment", write(tmp_path, "flat.nrrd", sitk.GetImageFromArray(np.ones((8, 9, 10), np.float32))),
            "--out", tmp_path / "o", *DIFFUSION_ONLY, says="constant")


def test_labels_on_another_grid_or_not_integer(tmp_path, capsys, phantom_files):
    image_path, labels_path = phantom_files
    labels = sitk.ReadImage(str(labels_path))
    moved = sitk.Image(labels)
    moved.SetOrigin(tuple(o + 5 for o in labels.GetOrigin()))
    refused(capsys, "augment", image_path, "--labels", write(tmp_path, "m.nrrd", moved), "--out", tmp_path / "o",
            *DIFFUSION_ONLY, says="do not lie on the image grid")
    fractional = sitk.Cast(labels, sitk.sitkFloat32) * 0.5
    refused(capsys, "augment", image_path, "--labels", write(tmp_path, "f.nrrd", fractional), "--out", tmp_path / "o",
            *DIFFUSION_ONLY, says="non-integer")


def test_depth_and_samples_out_of_range(tmp_path, capsys, phantom_files):
    image_path, _ = phantom_files
    refused(capsys, "augment", image_path, "--depth", 80, "--out", tmp_path / "o", *DIFFUSION_ONLY,
            says="--depth must be in 0…79")
    refused(capsys, "augment", image_path, "--depth", -1, "--out", tmp_path / "o", *DIFFUSION_ONLY,
            says="--depth must be in 0…79")
    refused(capsys, "augment", image_path, "--samples", 0, "--out", tmp_path / "o", *DIFFUSION_ONLY,
            says="--samples must be at least 1")
    assert not (tmp_path / "o").exists()


def test_unwritable_output_folder(tmp_path, capsys, phantom_files):
    refused(capsys, "augment", phantom_files[0], "--out", "/proc/drdm_out", *DIFFUSION_ONLY,
            says="cannot write to output folder")
    if os.geteuid() != 0:  # permission bits do not stop root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        refused(capsys, "augment", phantom_files[0], "--out", locked / "o", *DIFFUSION_ONLY,
                says="cannot write to output folder")


def test_output_path_that_cannot_be_a_folder(tmp_path, capsys, phantom_files):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    refused(capsys, "augment", phantom_files[0], "--out", blocker / "o", *DIFFUSION_ONLY,
            says="cannot write to output folder")
    refused(capsys, "augment", phantom_files[0], "--out", blocker, *DIFFUSION_ONLY, says="is a file")
    assert blocker.read_text() == "keep me"


def test_existing_output_is_never_overwritten(tmp_path, capsys, phantom_files):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    refused(capsys, "augment", phantom_files[0], "--out", out, "--samples", 1, *DIFFUSION_ONLY, says="already exists")
    assert (out / "precious.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    code, _ = run_cli(capsys, "augment", phantom_files[0], "--out", out, "--samples", 1, "--overwrite", *DIFFUSION_ONLY)
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


@pytest.mark.parametrize("argv", [["augment", "IMAGE", "--samples", "abc", "--out", "OUT"],
                                  ["augment", "IMAGE", "--out", "OUT", "--no-such-option"],
                                  ["train", "--data", "IMAGE", "--nproc", "abc"],
                                  ["evaluate", "--model", "m.pt"]],
                         ids=["augment-bad-int", "augment-unknown", "train-bad-int", "evaluate-no-data"])
def test_argparse_errors_say_drdm_error(tmp_path, capsys, argv):
    """Wording: argparse's own errors say `drdm augment: error:`; every error must say `drdm: error:`."""
    image = random_volume(tmp_path / "a.nii.gz")
    argv = [str(image) if a == "IMAGE" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code, err = run_cli(capsys, *argv)
    assert not re.search(r"^drdm \S+: error:", err, re.MULTILINE), err
    one_error_line(code, err)
