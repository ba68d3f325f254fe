"""Issue 20, reliability second round, dataset mode: lists, nnU-Net datasets, pairs and ``--workers`` get
the rails the single-image run has (no data loss, no wrong result, one line instead of a traceback).

Every test drives a public entry point (``drdm_engine.cli.main`` in this process, or ``python -m
drdm_engine`` in a child process) on tiny generated files, and asserts the behaviour the issue asks for.
Memory cases run in a child process under an address-space limit (RLIMIT_AS), so that a run without a
memory guard fails fast instead of exhausting the machine; disk-full cases write into a small tmpfs
(root only, skipped elsewhere).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import one_error_line, phantom, random_volume, refused, rotation, run_cli, run_drdm, write_dicom_series

FAST = ["--model", "none", "--size", "16", "--samples", "1"]
MANIFEST = "drdm_manifest.json"


# --- helpers ------------------------------------------------------------------------------------------
def label_map(path: Path, like: Path) -> Path:
    """A two-label map on the grid of the image ``like``."""
    image = sitk.ReadImage(str(like))
    shape = sitk.GetArrayViewFromImage(image).shape
    idx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.uint8)
    labels[sum(i ** 2 for i in idx) < 0.6] = 1
    labels[sum(i ** 2 for i in idx) < 0.2] = 2
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))
    return path


def nnunet(root: Path, ids, channels: int = 1, shape=(8, 16, 16), **geometry) -> Path:
    """An nnU-Net v2 raw dataset: ``imagesTr/<id>_<c:04d>.nii.gz``, ``labelsTr/<id>.nii.gz``, ``dataset.json``."""
    for n, case in enumerate(ids):
        for c in range(channels):
            random_volume(root / f"imagesTr/{case}_{c:04d}.nii.gz", shape, seed=10 * n + c, **geometry)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        label_map(root / f"labelsTr/{case}.nii.gz", root / f"imagesTr/{case}_0000.nii.gz")
    meta = {"channel_names": {str(c): f"ch{c}" for c in range(channels)}, "labels": {"background": 0, "a": 1, "b": 2},
            "numTraining": len(ids), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def manifest_paths(out: Path) -> list[str]:
    """Every output path a dataset manifest lists (samples and copied originals)."""
    manifest = json.loads((out / MANIFEST).read_text())
    paths = []
    for case in manifest["cases"]:
        for entry in [case.get("originals") or {}] + case["samples"]:
            paths += entry.get("images", []) + [entry[k] for k in ("labels", "field") if entry.get(k)]
    return paths


# === Data loss ===========================================================================================
def test_dataset_output_names_never_collide_in_a_folder(tmp_path, capsys):
    """Data loss: cases `a` and `a_drdm000` with --copy-originals must not write images/a_drdm000 twice."""
    data = tmp_path / "data"
    random_volume(data / "a.nii.gz", seed=1)
    random_volume(data / "a_drdm000.nii.gz", seed=2)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "augment", data, "--out", out, "--copy-originals", *FAST)
    if code == 2:  # refused: one line naming both cases
        one_error_line(code, err, "a_drdm000")
        return
    assert code == 0, err
    listed = manifest_paths(out)
    assert len(listed) == len(set(listed)), f"the manifest lists one file for two outputs: {sorted(listed)}"
    images = sorted(p.name for p in (out / "images").iterdir())
    assert len(images) == len([p for p in listed if p.startswith("images/")]), images


def test_nnunet_output_names_never_collide(tmp_path, capsys):
    """Data loss: nnU-Net cases `a` and `a_drdm000`: numTraining must equal the label files written."""
    data = nnunet(tmp_path / "Dataset001_X", ["a", "a_drdm000"])
    out = tmp_path / "out"
    code, err = run_cli(capsys, "augment", data, "--out", out, "--copy-originals", *FAST)
    if code == 2:
        one_error_line(code, err, "a_drdm000")
        return
    assert code == 0, err
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    number = json.loads((out / "dataset.json").read_text())["numTraining"]
    assert number == len(labels) == len(images), (number, labels, images)
    listed = manifest_paths(out)
    assert len(listed) == len(set(listed)), sorted(listed)


# === Wrong results =======================================================================================
@pytest.mark.parametrize("layout", ["folder", "nnunet"])
def test_one_slice_volumes_stay_3d_in_dataset_mode(tmp_path, capsys, layout):
    """Wrong results: a one-slice (X, Y, 1) NIfTI in dataset mode must come out 3D with its full geometry."""
    geometry = {"spacing": (0.8, 0.9, 2.5), "origin": (10.0, -20.0, 35.0), "direction": rotation(0.3, -0.2, 0.5)}
    if layout == "folder":
        data = tmp_path / "data"
        random_volume(data / "s.nii.gz", (1, 16, 16), **geometry)
        written = "images/s_drdm000.nii.gz"
    else:
        data = nnunet(tmp_path / "Dataset002_Slice", ["s"], shape=(1, 16, 16), **geometry)
        written = "imagesTr/s_drdm000_0000.nii.gz"
    code, err = run_cli(capsys, "augment", data, "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    source = sitk.ReadImage(str(next((data if layout == "folder" else data / "imagesTr").glob("s*.nii.gz"))))
    out = sitk.ReadImage(str(tmp_path / "out" / written))
    assert out.GetDimension() == 3 and out.GetSize() == (16, 16, 1), out.GetSize()
    assert np.allclose(out.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(out.GetSpacing(), source.GetSpacing(), atol=1e-5)
    assert np.allclose(out.GetDirection(), source.GetDirection(), atol=1e-5)


@pytest.mark.slow
def test_workers_give_the_same_manifest_figures(tmp_path):
    """Wrong results: --workers 2 must give the manifest figures of --workers 1 (float64 accumulation)."""
    data = tmp_path / "data"
    for n, shape in enumerate([(20, 70, 66), (17, 61, 67)]):  # sizes whose float32 mean depends on the threads
        random_volume(data / f"c{n}.nii.gz", shape, seed=n)
    # the same environment for both runs; one worker runs in the main process with twice the threads each of
    # two workers gets (cpu_count // 2): the figures must not depend on that
    threads = 2 * max(1, (os.cpu_count() or 1) // 2)
    cases = {}
    for workers in (1, 2):
        done = run_drdm("augment", data, "--out", tmp_path / f"w{workers}", "--workers", workers, "--samples", "2",
                        "--model", "none", "--size", "16", "--progress-lines", threads=threads)
        assert done.returncode == 0, done.stderr[-3000:]
        cases[workers] = json.loads((tmp_path / f"w{workers}" / MANIFEST).read_text())["cases"]
    differ = [(c1["id"], k, s1["metrics"][k], s2["metrics"][k])
              for c1, c2 in zip(cases[1], cases[2]) for s1, s2 in zip(c1["samples"], c2["samples"])
              for k in s1["metrics"] if s1["metrics"][k] != s2["metrics"][k]]
    assert not differ, differ


# === Tracebacks instead of one line ======================================================================
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.slow
def test_case_names_too_long_for_the_file_system_are_one_line(tmp_path, workers):
    """Tracebacks: dataset case names too long for the file system (OSError: File name too long)."""
    data = tmp_path / "data"
    for n, letter in enumerate("ab"):
        random_volume(data / (letter * 245 + ".nii.gz"), seed=n)  # 252 characters: the outputs' names exceed 255
    done = run_drdm("augment", data, "--out", tmp_path / "out", "--workers", workers, *FAST)
    one_error_line(done.returncode, done.stderr)


@pytest.mark.slow
def test_dataset_case_needing_more_memory_than_there_is_is_one_line(tmp_path):
    """Tracebacks: dataset mode without the memory guard, a case needing more memory than there is."""
    data = tmp_path / "data"
    random_volume(data / "a.nii.gz")
    random_volume(data / "b.nii.gz", seed=1)
    # --size 1024: the working-grid fields need ~37 GiB (the single-image run's guard refuses it from the
    # headers); the address-space limit makes a run without the guard fail fast instead of swapping
    done = run_drdm("augment", data, "--out", tmp_path / "out", "--model", "none", "--size", "1024", "--samples",
                    "1", "--device", "cpu", memory_gib=6)
    line = one_error_line(done.returncode, done.stderr)
    assert "memory" in line, line


def _gzip_member(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.slow
def test_dataset_decompression_bomb_is_one_line(tmp_path):
    """Tracebacks: dataset mode, a decompression bomb (a 1600^3 header, 4 MB of gzip) -> MemoryError."""
    side, block = 1600, 64 << 20
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "bomb.nrrd", "wb") as handle:
        handle.write(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {side} {side} {side}\nspacings: 1 1 1\n"
                     f"encoding: gzip\n\n".encode())
        zeros, left = _gzip_member(bytes(block)), side ** 3 - 4096
        while left >= block:
            handle.write(zeros)
            left -= block
        handle.write(_gzip_member(bytes(left)) + _gzip_member(np.arange(4096).astype(np.uint8).tobytes()))
    assert (data / "bomb.nrrd").stat().st_size < 8 << 20
    done = run_drdm("augment", data, "--out", tmp_path / "out", *FAST, "--device", "cpu", memory_gib=6)
    line = one_error_line(done.returncode, done.stderr)
    assert "memory" in line, line


@pytest.mark.parametrize("force", [False, True], ids=["guard", "force-large"])
def test_dataset_full_disk_is_one_line_and_keeps_foreign_files(tmp_path, capsys, small_disk, force):
    """Tracebacks: dataset mode on a full disk (OSError: No space left on device); foreign files stay."""
    data = tmp_path / "data"
    data.mkdir()
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 64, 64)).astype(np.float32))
    sitk.WriteImage(image, str(data / "big.nrrd"))
    out = small_disk / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = refused(capsys, "augment", data, "--out", out, "--overwrite", "--samples", "2", "--model", "none",
                   "--size", "16", *(["--force-large"] if force else []))
    if force:
        assert "No space left on device" in line, line
    assert (out / "keep.txt").read_text() == "mine"


def test_nnunet_dataset_json_that_is_a_list_is_one_line(tmp_path, capsys):
    """Tracebacks: an nnU-Net dataset.json that is a JSON list (AttributeError)."""
    data = nnunet(tmp_path / "Dataset003_List", ["a"])
    (data / "dataset.json").write_text("[1, 2]")
    refused(capsys, "augment", data, "--out", tmp_path / "out", *FAST, says="dataset.json")


# === Refused when it should work, or accepted when it should be refused ==================================
def test_csv_list_with_a_byte_order_mark_is_read(tmp_path, capsys):
    """Refused/accepted: a CSV saved by Excel as "CSV UTF-8" (byte-order mark) must be read."""
    image = random_volume(tmp_path / "c.nii.gz")
    label_map(tmp_path / "c_seg.nii.gz", image)
    (tmp_path / "cases.csv").write_text("image,labels\nc.nii.gz,c_seg.nii.gz\n", encoding="utf-8-sig")
    code, err = run_cli(capsys, "augment", tmp_path / "cases.csv", "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    assert (tmp_path / "out/images/c_drdm000.nii.gz").is_file() and (tmp_path / "out/labels/c_drdm000.nii.gz").is_file()


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64)])
def test_dataset_mode_checks_the_seed_like_a_single_image(tmp_path, capsys, seed):
    """Refused/accepted: dataset mode accepts --seed -1 (and 2**64); the single-image run refuses them."""
    data = tmp_path / "data"
    random_volume(data / "a.nii.gz")
    refused(capsys, "augment", data / "a.nii.gz", "--out", tmp_path / "single", f"--seed={seed}", *FAST,
            says="--seed must be")
    refused(capsys, "augment", data, "--out", tmp_path / "out", f"--seed={seed}", *FAST, says="--seed must be")
    assert not (tmp_path / "out" / MANIFEST).exists()


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_refused_dataset_run_does_not_block_the_corrected_one(tmp_path, capsys, overwrite):
    """Refused/accepted: after a run refused for a bad --depth, the corrected command must run."""
    data = tmp_path / "data"
    random_volume(data / "a.nii.gz")
    out = tmp_path / "out"
    refused(capsys, "augment", data, "--out", out, "--depth", "80", *FAST, says="--depth")
    code, err = run_cli(capsys, "augment", data, "--out", out, "--depth", "40", *FAST,
                        *(["--overwrite"] if overwrite else []))
    assert code == 0, err
    assert (out / MANIFEST).is_file()


def test_a_case_error_names_the_case_once(tmp_path, capsys):
    """Wording: "case b: case b:" doubled (a channel of case b off the grid of its first channel)."""
    data = nnunet(tmp_path / "Dataset004_Grid", ["a", "b"], channels=2)
    moved = sitk.ReadImage(str(data / "imagesTr/b_0001.nii.gz"))
    moved.SetOrigin(tuple(o + 7 for o in moved.GetOrigin()))
    sitk.WriteImage(moved, str(data / "imagesTr/b_0001.nii.gz"))
    line = refused(capsys, "augment", data, "--out", tmp_path / "out", *FAST, says="case b")
    assert line.count("case b") == 1, line


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _spawned_worker(pid: int, deadline: float) -> int | None:
    """A ``multiprocessing`` spawn worker of process ``pid`` (not its resource tracker), once it exists."""
    while time.monotonic() < deadline:
        for child in _children(pid):
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                continue
        time.sleep(0.05)
    return None


@pytest.mark.slow
def test_a_killed_worker_says_finished_cases_are_kept_once(tmp_path, drdm_process):
    """Wording: "finished cases are kept" said twice after a --workers process is killed."""
    data = tmp_path / "data"
    for n in range(4):
        random_volume(data / f"c{n}.nii.gz", (16, 32, 32), seed=n)
    run = drdm_process("augment", data, "--out", tmp_path / "out", "--workers", "2", "--samples", "2", "--model",
                       "none", "--size", "32", "--progress-lines", stdout=subprocess.DEVNULL)
    worker = _spawned_worker(run.pid, time.monotonic() + 60)
    assert worker is not None, "no worker process appeared"
    os.kill(worker, signal.SIGKILL)
    _, err = run.communicate(timeout=180)
    line = one_error_line(run.returncode, err)
    assert line.count("finished cases are kept") == 1, line


@pytest.mark.slow
def test_dataset_mode_exits_143_on_sigterm_like_a_single_image(tmp_path, drdm_process):
    """Wording: dataset mode exits 130 on SIGTERM where a single image exits 143 (128 + SIGTERM)."""
    data = tmp_path / "data"
    for n in range(3):
        random_volume(data / f"c{n}.nii.gz", (16, 32, 32), seed=n)
    run = drdm_process("augment", data, "--out", tmp_path / "out", "--samples", "2", "--model", "none", "--size", "32",
                       "--progress-lines")
    for line in run.stdout:
        if line.startswith("drdm-progress"):
            run.send_signal(signal.SIGSTOP)  # paused at its first sample: the test does not race the run
            break
    else:
        pytest.fail(f"the run ended before its first sample: {run.stderr.read()}")
    run.send_signal(signal.SIGTERM)
    run.send_signal(signal.SIGCONT)
    _, err = run.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert run.returncode == 128 + signal.SIGTERM, (run.returncode, err)


def test_the_disk_guard_does_not_say_zero_gib_for_small_runs(tmp_path, capsys, small_disk):
    """Wording: the disk guard says "about 0.0 GiB … has 0.0 GiB free" for small runs."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 64, 64)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "big.nrrd"))
    line = refused(capsys, "augment", tmp_path / "big.nrrd", "--out", small_disk / "o", "--samples", "2", "--model",
                   "none", "--size", "16")
    assert "0.0 GiB" not in line and not re.search(r"(?<![\d.])0(\.0+)? [KMG]i?B", line), line


# === Further cases (not in the issue) ====================================================================
def test_extra_csv_list_with_a_short_row_is_one_line(tmp_path, capsys):
    """Extra (lists): a CSV row with fewer cells than the header (AttributeError on None.strip())."""
    random_volume(tmp_path / "c.nii.gz")
    (tmp_path / "cases.csv").write_text("image,labels,case\nc.nii.gz\n")
    code, err = run_cli(capsys, "augment", tmp_path / "cases.csv", "--out", tmp_path / "out", *FAST)
    if code == 0:  # a missing optional cell read as empty is fine too
        assert (tmp_path / "out/images/c_drdm000.nii.gz").is_file()
        return
    one_error_line(code, err)


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_extra_list_file_that_is_not_utf8_is_one_line(tmp_path, capsys, suffix):
    """Extra (lists): a list file in Latin-1 (an accented file name) -> UnicodeDecodeError."""
    random_volume(tmp_path / "café.nii.gz")
    text = ("image\n" if suffix == ".csv" else "") + "café.nii.gz\n"
    (tmp_path / f"cases{suffix}").write_bytes(text.encode("latin-1"))
    code, err = run_cli(capsys, "augment", tmp_path / f"cases{suffix}", "--out", tmp_path / "out", *FAST)
    if code == 0:  # read with a fallback encoding is fine too
        assert (tmp_path / "out/images/café_drdm000.nii.gz").is_file()
        return
    one_error_line(code, err, f"cases{suffix}")


def test_extra_nnunet_file_ending_that_is_not_text_is_one_line(tmp_path, capsys):
    """Extra (nnU-Net): dataset.json with a numeric file_ending (TypeError in re.escape)."""
    data = nnunet(tmp_path / "Dataset005_Ending", ["a"])
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "file_ending": 5}))
    refused(capsys, "augment", data, "--out", tmp_path / "out", *FAST, says="file_ending")


def test_extra_pairs_of_a_single_image_check_the_seed(tmp_path, capsys):
    """Extra (--pairs): one image with --pairs takes the dataset path and accepts --seed -1."""
    image = random_volume(tmp_path / "a.nii.gz")
    refused(capsys, "augment", image, "--pairs", "--out", tmp_path / "out", "--seed=-1", "--model", "none",
            "--size", "16", "--samples", "2", says="--seed must be")




# === Found in review: resume, overwrite and the output folder ==========================================
def test_a_run_with_other_inputs_does_not_resume_a_finished_one(tmp_path, capsys):
    """The resume key holds each case's files: adding labels to a finished run is another run (refused,
    or started afresh with --overwrite), not "2 of 2 cases already done"."""
    data, masks = tmp_path / "data", tmp_path / "masks"
    for n in range(2):
        label_map(masks / f"c{n}.nii.gz", random_volume(data / f"c{n}.nii.gz", seed=n)) if masks.mkdir(
            exist_ok=True) is None else None
    out = tmp_path / "out"
    assert run_cli(capsys, "augment", data, "--out", out, *FAST)[0] == 0
    refused(capsys, "augment", data, "--labels-dir", masks, "--out", out, *FAST, says="holds another dataset run")
    code, err = run_cli(capsys, "augment", data, "--labels-dir", masks, "--out", out, "--overwrite", *FAST)
    assert code == 0 and "resuming" not in err, err
    assert all(case["source"]["labels"] for case in json.loads((out / MANIFEST).read_text())["cases"])


def test_overwrite_with_other_settings_names_the_files_it_leaves(tmp_path, capsys):
    """--overwrite replaces same-named outputs only; files an earlier run of other settings recorded and
    this one does not write stay, and the run says so in one note (the manifest lists this run's only)."""
    data = tmp_path / "data"
    random_volume(data / "c.nii.gz")
    out = tmp_path / "out"
    assert run_cli(capsys, "augment", data, "--out", out, "--model", "none", "--size", "16", "--samples", "2")[0] == 0
    code, err = run_cli(capsys, "augment", data, "--out", out, "--overwrite", *FAST)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("drdm: note:")]
    assert len(notes) == 1 and "files of an earlier run remain" in notes[0] and "c_drdm001" in notes[0], notes
    assert (out / "images/c_drdm001.nii.gz").is_file()
    assert manifest_paths(out) == ["images/c_drdm000.nii.gz", "fields/c_drdm000_field.nrrd"]


def test_a_resumed_run_needs_disk_only_for_the_cases_left(tmp_path, capsys, monkeypatch):
    """The disk guard of a resumed run counts the cases still to do, not the finished ones."""
    import drdm_engine.jobs.resources as resources

    data = tmp_path / "data"
    for n in range(3):
        random_volume(data / f"c{n}.nii.gz", (16, 32, 32), seed=n)
    out = tmp_path / "out"
    assert run_cli(capsys, "augment", data, "--out", out, *FAST)[0] == 0
    (out / ".drdm_state/cases/c2.json").unlink()
    (out / MANIFEST).unlink()
    one_case = 16 * 32 * 32 * (4 + 3 * 4) * 2  # input scratch and one sample of the last case, generously
    monkeypatch.setattr(resources, "free_disk", lambda folder: one_case)
    code, err = run_cli(capsys, "augment", data, "--out", out, *FAST)
    assert code == 0 and "2 of 3 cases already done" in err, err
    monkeypatch.setattr(resources, "free_disk", lambda folder: one_case // 8)
    (out / ".drdm_state/cases/c2.json").unlink()
    refused(capsys, "augment", data, "--out", out, *FAST, says="this run writes about")


def test_a_folder_where_an_output_file_goes_is_refused_and_nothing_of_the_case_moves(tmp_path, capsys):
    data = tmp_path / "data"
    random_volume(data / "a.nii.gz")
    out = tmp_path / "out"
    (out / "images/a_drdm000.nii.gz").mkdir(parents=True)
    refused(capsys, "augment", data, "--out", out, "--overwrite", *FAST, says="not a regular file")
    assert not (out / "fields").exists() and not list(out.glob(".drdm-staging-*"))


def test_pairs_of_a_dicom_series_are_written_as_nrrd(tmp_path, capsys):
    """A DICOM folder has no file suffix: its outputs in a dataset layout are NRRD files."""
    series = tmp_path / "series"
    write_dicom_series(phantom(size=(16, 16, 4), direction=np.eye(3))[0], series)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "augment", series, "--pairs", "--out", out, "--model", "none", "--size", "16",
                        "--samples", "2")
    assert code == 0, err
    assert (out / "images/series_drdm000.nrrd").is_file() and (out / "images/series.nrrd").is_file()


def test_the_input_nnunet_dataset_is_not_an_output_folder(tmp_path, capsys):
    data = nnunet(tmp_path / "Dataset001_X", ["a", "b"])
    before = sorted(p.name for p in (data / "imagesTr").iterdir())
    refused(capsys, "augment", data, "--out", data, "--overwrite", *FAST, says="is the input nnU-Net dataset")
    assert sorted(p.name for p in (data / "imagesTr").iterdir()) == before


def test_a_folder_holding_only_a_run_state_counts_as_empty(tmp_path, capsys):
    """``.drdm_state`` is the tool's own, as its lock and staging folders are: a folder holding nothing else
    is not "not empty"."""
    data = tmp_path / "data"
    random_volume(data / "a.nii.gz")
    out = tmp_path / "out"
    (out / ".drdm_state").mkdir(parents=True)
    assert run_cli(capsys, "augment", data, "--out", out, *FAST)[0] == 0
