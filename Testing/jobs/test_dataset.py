"""`drdm augment` over a dataset: nnU-Net layout, channels, seeds per case, resume, list/folder inputs, errors."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import refused, run_drdm
from dataset_fixtures import build_nnunet, chest_case, tree

from drdm_engine.cli import main
from drdm_engine.core.grid import Geometry
from drdm_engine.jobs.layout import DatasetLayout, case_seed

MANIFEST = DatasetLayout.manifest
ARGS = ["--samples", "2", "--model", "none", "--size", "32", "--seed", "5", "--progress-lines"]


def augment(*args) -> int:
    return main(["augment", *map(str, args), *ARGS])


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    data = build_nnunet(root / "Dataset001_Chest")
    out = root / "out"
    assert augment(data, "--out", out, "--copy-originals") == 0
    return data, out


def test_nnunet_layout_dataset_json_and_manifest(nnunet):
    data, out = nnunet
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 9 and meta["file_ending"] == ".nii.gz" and meta["channel_names"]["1"] == "smooth"
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert labels == sorted(f"chest{o}{s}.nii.gz" for o in range(3) for s in ("", "_drdm000", "_drdm001"))
    assert len(list((out / "imagesTr").iterdir())) == 18
    manifest = json.loads((out / MANIFEST).read_text())
    assert [c["id"] for c in manifest["cases"]] == ["chest0", "chest1", "chest2"]
    for case in manifest["cases"]:
        assert case["seed"] == case_seed(5, case["id"])
        assert [s["id"] for s in case["samples"]] == [f"{case['id']}_drdm000", f"{case['id']}_drdm001"]
        for sample in case["samples"]:
            assert {"folding_fraction", "dice", "displacement_p99_mm"} <= set(sample["metrics"])
            assert all((out / p).is_file() for p in sample["images"] + [sample["labels"], sample["field"]])
    assert sitk.ReadImage(str(out / "imagesTr/chest1_0001.nii.gz")).GetSize() == (32, 32, 17)


def test_every_channel_gets_the_same_field_and_keeps_its_geometry(nnunet):
    """Each channel output equals SimpleITK's resampling of that channel with the sample's field file."""
    data, out = nnunet
    field = sitk.Cast(sitk.ReadImage(str(out / "drdm_fields/chest1_drdm001_field.nrrd")), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))
    assert np.linalg.norm(sitk.GetArrayFromImage(field), axis=-1).mean() > 1.0
    for channel, tolerance in ((0, 1.0), (1, 0.05)):
        source = sitk.ReadImage(str(data / f"imagesTr/chest1_{channel:04d}.nii.gz"))
        ours = sitk.ReadImage(str(out / f"imagesTr/chest1_drdm001_{channel:04d}.nii.gz"))
        assert Geometry.of(ours).matches(Geometry.of(source), tol=1e-5) and ours.GetPixelID() == source.GetPixelID()
        theirs = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(source, sitk.sitkFloat32), source, transform,
                                                      sitk.sitkLinear, np.nan))
        inside = np.isfinite(theirs)
        assert inside.mean() > 0.6
        assert np.abs(sitk.GetArrayFromImage(ours)[inside] - theirs[inside]).mean() < tolerance
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "labelsTr/chest1.nii.gz")))
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr/chest1_drdm001.nii.gz")))
    assert set(np.unique(after)) == set(np.unique(before))


def test_a_case_does_not_depend_on_the_other_cases(nnunet, tmp_path):
    """A list file holding one case (other order, other neighbours) gives that case's files byte for byte."""
    data, out = nnunet
    listing = tmp_path / "one.csv"
    listing.write_text(f"case,image,labels\nchest2,{data}/imagesTr/chest2_0000.nii.gz,{data}/labelsTr/chest2.nii.gz\n")
    assert augment(listing, "--out", tmp_path / "o") == 0
    for k in range(2):
        ours = (tmp_path / f"o/images/chest2_drdm{k:03d}.nii.gz").read_bytes()
        assert ours == (out / f"imagesTr/chest2_drdm{k:03d}_0000.nii.gz").read_bytes()
        assert (tmp_path / f"o/fields/chest2_drdm{k:03d}_field.nrrd").read_bytes() == \
            (out / f"drdm_fields/chest2_drdm{k:03d}_field.nrrd").read_bytes()


def test_an_interrupted_run_resumes_and_gives_the_same_files(nnunet, tmp_path, capsys):
    data, out = nnunet
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = tree(copy)
    # interrupted while case chest1 was being moved into place: its record missing, one file gone, staging left
    (copy / ".drdm_state/cases/chest1.json").unlink()
    (copy / "labelsTr/chest1_drdm001.nii.gz").unlink()
    staged = copy / ".drdm-staging-99999-killed/chest1/imagesTr"  # a killed run's staging folder
    staged.mkdir(parents=True)
    (staged / "chest1_drdm000_0000.nii.gz").write_bytes(b"half")
    kept = (copy / "imagesTr/chest0_drdm000_0000.nii.gz").stat().st_mtime_ns
    assert augment(data, "--out", copy, "--copy-originals") == 0
    assert "2 of 3 cases already done" in capsys.readouterr().err
    assert (copy / "imagesTr/chest0_drdm000_0000.nii.gz").stat().st_mtime_ns == kept  # finished cases skipped
    assert {k: v for k, v in tree(copy).items() if k != MANIFEST} == {k: v for k, v in before.items() if k != MANIFEST}
    assert not list(copy.glob(".drdm-staging-*"))
    code = augment(data, "--out", copy, "--depth", "40")
    assert code == 2 and "holds another dataset run" in capsys.readouterr().err


def test_folder_with_label_pattern_and_errors(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    labels.mkdir()
    for o in range(2):
        ct, seg = chest_case(o)
        sitk.WriteImage(ct, str(images / f"p{o}.nrrd"))
        sitk.WriteImage(seg, str(labels / f"p{o}_seg.nii.gz"))
    assert augment(images, "--labels-dir", labels, "--labels-pattern", "{case}_seg.nii.gz", "--out", tmp_path / "o") == 0
    names = [f"p{o}_drdm{k:03d}.nii.gz" for o in range(2) for k in range(2)]
    assert sorted(p.name for p in (tmp_path / "o/labels").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "o/images").iterdir())[0] == "p0_drdm000.nrrd"
    capsys.readouterr()
    refused(capsys, "augment", images, "--labels-dir", labels, "--labels-pattern", "{case}_mask.nrrd", "--out",
            tmp_path / "x", *ARGS, says="no label file")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_same_files_whatever_the_number_of_processes(nnunet, tmp_path):
    """torchrun with 1 and 2 gloo processes (cases sharded by rank) and 2 CPU workers give the same bytes."""
    data, _ = nnunet
    outputs = {}
    for name, launcher in (("torchrun1", ["-m", "torch.distributed.run", "--nproc_per_node", "1"]),
                           ("torchrun2", ["-m", "torch.distributed.run", "--nproc_per_node", "2"]),
                           ("workers2", [])):
        extra = ["--workers", "2"] if name == "workers2" else []
        done = run_drdm("augment", data, "--out", tmp_path / name, "--device", "cpu", *ARGS, *extra, launcher=launcher)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = tree(tmp_path / name)
        manifest = json.loads(outputs[name].pop(MANIFEST))
        outputs[name]["cases"] = json.dumps(manifest["cases"]).encode()
    assert len(outputs["torchrun1"]) == 1 + 12 + 6 + 6 + 1  # dataset.json, images, labels, fields, cases
    assert outputs["torchrun2"] == outputs["torchrun1"]
    assert outputs["workers2"] == outputs["torchrun1"]


def test_a_bad_case_stops_the_run_with_one_line_and_keeps_finished_cases(tmp_path, capsys):
    data = build_nnunet(tmp_path / "Dataset002_Bad")
    labels = sitk.ReadImage(str(data / "labelsTr/chest2.nii.gz"))
    labels.SetOrigin(tuple(o + 7 for o in labels.GetOrigin()))
    sitk.WriteImage(labels, str(data / "labelsTr/chest2.nii.gz"))
    capsys.readouterr()
    refused(capsys, "augment", data, "--out", tmp_path / "o", *ARGS,
            says=("case chest2", "do not lie on the image grid", "rerun the same command to resume"))
    assert sorted(p.name for p in (tmp_path / "o/.drdm_state/cases").iterdir()) == ["chest0.json", "chest1.json"]
    assert not (tmp_path / "o/imagesTr/chest2_drdm000_0000.nii.gz").exists()
    assert not (tmp_path / "o" / MANIFEST).exists()


@pytest.mark.slow
def test_ctrl_c_keeps_finished_cases_and_a_rerun_completes_them(nnunet, tmp_path, drdm_process):
    """A real SIGINT during the run: exit 130, no staging left; rerunning gives the uninterrupted run's files."""
    data, out = nnunet
    target = tmp_path / "o"
    argv = ["augment", data, "--out", target, "--copy-originals", *ARGS]
    process = drdm_process(*argv, threads=None, stdout=subprocess.DEVNULL)
    first = target / ".drdm_state/cases/chest0.json"
    while not first.exists() and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode in (0, 130), err
    if process.returncode == 130:  # (on a fast machine the run may finish before the signal lands)
        assert "rerun the same command to resume" in err
        assert not (target / MANIFEST).exists()
    assert not list(target.glob(".drdm-staging-*"))
    assert run_drdm(*argv, threads=None).returncode == 0
    assert {k: v for k, v in tree(target).items() if k != MANIFEST} == {k: v for k, v in tree(out).items() if k != MANIFEST}


def test_list_files_and_their_errors(tmp_path, capsys):
    from drdm_engine.jobs.cases import find_cases, is_dataset

    for o in range(2):
        ct, seg = chest_case(o)
        sitk.WriteImage(ct, str(tmp_path / f"c{o}.nii.gz"))
        sitk.WriteImage(seg, str(tmp_path / f"c{o}_seg.nrrd"))
    listing = tmp_path / "cases.txt"
    listing.write_text("# image labels\nc0.nii.gz c0_seg.nrrd\n\nc1.nii.gz,c1_seg.nrrd  # second\n")
    found = find_cases(listing)
    assert is_dataset(listing) and [c.id for c in found.cases] == ["c0", "c1"]
    assert found.cases[1].labels == str(tmp_path / "c1_seg.nrrd") and found.cases[0].channels == (str(tmp_path / "c0.nii.gz"),)
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom/IM0001.dcm").write_bytes(b"")
    assert not is_dataset(tmp_path / "dicom")  # a DICOM folder is one image
    evil = tmp_path / "evil.csv"
    evil.write_text("case,image\n../escape,c0.nii.gz\n")
    capsys.readouterr()
    refused(capsys, "augment", evil, "--out", tmp_path / "o", *ARGS, says="cannot name files")
    assert not (tmp_path / "o").exists()
    missing = tmp_path / "missing.txt"
    missing.write_text("c0.nii.gz\nc9.nii.gz\n")
    assert augment(missing, "--out", tmp_path / "o") == 2
    assert "case c9: file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dataset_folder_in_use_is_refused(nnunet, tmp_path, drdm_process):
    """A second dataset run into the folder of a running one (stopped with SIGSTOP at its first progress
    line, so the test does not race it) is refused with one line, as for one image; the first then
    finishes, and its lock is gone."""
    data, _ = nnunet
    target = tmp_path / "o"
    argv = ["augment", data, "--out", target, *ARGS]
    first = drdm_process(*argv, threads=None)
    for line in first.stdout:
        if line.startswith("drdm-progress"):
            first.send_signal(signal.SIGSTOP)
            break
    second = run_drdm(*argv, threads=None)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [second.stderr.strip()]
    assert "is in use by another drdm run" in second.stderr
    first.send_signal(signal.SIGCONT)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert not (target / ".drdm-lock").exists()
    assert (target / MANIFEST).is_file()
