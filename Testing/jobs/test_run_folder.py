"""The output folder of `drdm augment` with real processes and signals: a folder in use is refused,
an interrupted or terminated run removes only what it wrote, the folder always holds one consistent
run, a full disk is one line, and a folder in an output's place is refused."""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import error_lines, phantom, refused, samples_of

from drdm_engine.cli import main

RUN = ["--samples", "6", "--depth", "40", "--model", "none", "--size", "32", "--progress-lines"]


def pause_at(process: subprocess.Popen, text: str) -> None:
    """Read progress lines until one contains ``text``, then stop the process there (SIGSTOP; a
    signal sent meanwhile is handled when it continues): the test does not race the run."""
    for line in process.stdout:
        if text in line:
            process.send_signal(signal.SIGSTOP)
            return
    raise AssertionError(f"the run ended before '{text}': {process.stderr.read()}")


def stop_and_finish(process: subprocess.Popen, signum: int) -> str:
    process.send_signal(signum)
    process.send_signal(signal.SIGCONT)
    return process.communicate(timeout=120)[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture()
def case(tmp_path):
    image, labels = phantom(size=(48, 40, 32))
    ip, lp = tmp_path / "case.nrrd", tmp_path / "case_labels.nrrd"
    sitk.WriteImage(image, str(ip))
    sitk.WriteImage(labels, str(lp))
    return ip, lp


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.slow
def test_a_terminated_run_removes_what_it_wrote_and_the_next_run_works(tmp_path, case, stop, drdm_process):
    out = tmp_path / "a" / "b" / "c"
    run = drdm_process("augment", case[0], "--labels", case[1], "--out", out, *RUN)
    pause_at(run, "sample 2/6 done")
    assert any((tmp_path / "a").rglob("*.nrrd"))  # the run has written files
    err = stop_and_finish(run, stop)
    assert run.returncode == 128 + stop, err
    assert f"interrupted ({signal.Signals(stop).name})" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()  # no output, no staging, no lock, no empty parents
    assert main(["augment", str(case[0]), "--out", str(out), "--samples", "1", "--model", "none", "--size", "32"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["case_drdm_000.nrrd", "case_drdm_000_field.nrrd",
                                                            "case_drdm_000_preview.png", "manifest.json"])


@pytest.mark.slow
def test_a_folder_in_use_is_refused_and_a_stopped_overwrite_leaves_the_previous_run(tmp_path, case, capsys,
                                                                                       drdm_process):
    out = tmp_path / "o"
    first = drdm_process("augment", case[0], "--out", out, *RUN)
    pause_at(first, "sample 1/6 done")
    for overwrite in ([], ["--overwrite"]):
        refused(capsys, "augment", case[0], "--out", out, "--samples", "1", "--model", "none", "--size", "32",
                *overwrite, says="in use by another drdm run")
    first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    finished = snapshot(out)
    assert len(samples_of(json.loads(finished["manifest.json"]))) == 6

    again = drdm_process("augment", case[0], "--out", out, "--overwrite", "--seed", "9", *RUN)
    pause_at(again, "sample 3/6 done")
    stop_and_finish(again, signal.SIGINT)
    assert again.returncode == 130
    assert snapshot(out) == finished  # the finished run, whole and untouched


def test_a_folder_where_an_output_file_goes_is_refused_before_any_work(tmp_path, case, capsys):
    out = tmp_path / "o"
    (out / "case_drdm_000_field.nrrd").mkdir(parents=True)
    (out / "case_drdm_000_field.nrrd" / "keep.txt").write_text("mine")
    refused(capsys, "augment", case[0], "--out", out, "--samples", "1", "--model", "none", "--size", "32",
            "--overwrite", says="not a regular file")
    assert sorted(p.name for p in out.rglob("*")) == ["case_drdm_000_field.nrrd", "keep.txt"]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, small_disk):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 64, 64)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "big.nrrd"))
    args = ["augment", str(tmp_path / "big.nrrd"), "--out", str(small_disk / "o"), "--samples", "2", "--model", "none",
            "--size", "16"]
    assert main(args) == 2
    assert "this run writes about" in capsys.readouterr().err  # the disk guard, before any work
    # the user insisted: the real write fails
    refused(capsys, *args, "--force-large", says=("No space left on device", "MiB free"))
    assert list(small_disk.iterdir()) == []


@pytest.mark.slow
def test_a_killed_run_leaves_no_visible_file_and_does_not_block_the_next(tmp_path, case, drdm_process, capsys):
    """SIGKILL (what a cancel button may send) cannot be handled: only the hidden staging folder stays,
    the OS releases the lock, and the next run into the folder works without --overwrite."""
    out = tmp_path / "o"
    run = drdm_process("augment", case[0], "--out", out, *RUN)
    pause_at(run, "sample 2/6 done")
    stop_and_finish(run, signal.SIGKILL)
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    assert main(["augment", str(case[0]), "--out", str(out), "--samples", "1", "--model", "none", "--size", "32"]) == 0
    assert len(samples_of(json.loads((out / "manifest.json").read_text()))) == 1


@pytest.mark.slow
def test_two_runs_started_together_into_a_new_folder_one_wins(tmp_path, case, drdm_process):
    out = tmp_path / "new" / "o"
    runs = [drdm_process("augment", case[0], "--out", out, *RUN) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refusal = next(err for code, err in results if code == 2)
    errors = error_lines(refusal)
    assert len(errors) == 1 and ("in use by another drdm run" in errors[0] or "already exists" in errors[0])
    assert len(samples_of(json.loads((out / "manifest.json").read_text()))) == 6
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_overwrite_with_fewer_samples_names_the_earlier_files_it_leaves(tmp_path, case, capsys):
    """`--overwrite` replaces same-named outputs only: sample files of an earlier run with more samples
    stay (nothing a run did not write is deleted), and the run says so in one line."""
    out = tmp_path / "out"
    small = ["--depth", "40", "--model", "none", "--size", "32"]
    assert main(["augment", str(case[0]), "--out", str(out), "--samples", "3", *small]) == 0
    capsys.readouterr()
    assert main(["augment", str(case[0]), "--out", str(out), "--samples", "1", "--overwrite", *small]) == 0
    note = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    stem = case[0].name.split(".")[0]
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(f"{stem}_drdm_00") and "_000" not in p.name)
    assert leftovers and len(note) == 1 and f"{len(leftovers)} files of an earlier run" in note[0]
    assert len(samples_of(json.loads((out / "manifest.json").read_text()))) == 1
    assert main(["augment", str(case[0]), "--out", str(out), "--samples", "3", "--overwrite", *small]) == 0
    assert "note:" not in capsys.readouterr().err
