"""``drdm train`` / ``drdm evaluate`` guards (issue 9): an earlier run is never replaced or appended to by
accident, outputs that cannot be written and impossible settings are one-line errors before any work."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from training_fixtures import write_phantoms

from drdm_engine.cli import main
from drdm_engine.model.checkpoint import ModelMeta, save_checkpoint
from drdm_engine.model.network import RecResACNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path):
    write_phantoms(tmp_path / "data", (12, 10), 2, ".nrrd")
    return tmp_path / "data"


def train_args(data: Path, out: Path, *extra) -> list[str]:
    return ["train", "--data", str(data), "--size", "16", "--control-size", "16", "--steps", "1",
            "--out", str(out), "--no-progress", "--device", "cpu", "--validate-every", "0", *map(str, extra)]


def run_cli(capsys, argv) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def assert_refused(result, fragment: str) -> None:
    code, err = result
    errors = [line for line in err if line.startswith("drdm: error:")]
    assert code == 2 and len(errors) == 1 and fragment in errors[0], result


def log_steps(out: Path) -> list[int]:
    return [int(row["step"]) for row in csv.DictReader((out / "train_log.csv").open())]


# --- D2: an existing run folder ---------------------------------------------------------------------
def test_a_second_run_into_the_same_folder_is_refused(data, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(data, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "drdm_engine", *train_args(data, out)], env=env,
                          capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1 and "already holds a training run" in errors[0], done.stderr
    assert "--resume" in errors[0] and "--overwrite" in errors[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_continues_and_overwrite_replaces_only_the_run_files(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data, out)) == 0
    assert main(train_args(data, out, "--steps", "2", "--resume", out / "checkpoint.pt")) == 0
    assert log_steps(out) == [1, 2]
    (out / "my_notes.txt").write_text("keep me")
    assert_refused(run_cli(capsys, train_args(data, out, "--overwrite", "--resume", out / "checkpoint.pt")),
                   "not both")
    assert main(train_args(data, out, "--overwrite")) == 0
    assert log_steps(out) == [1] and (out / "my_notes.txt").read_text() == "keep me"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["training"]["step"] == 1
    other = tmp_path / "other"
    assert main(train_args(data, other)) == 0
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    assert_refused(run_cli(capsys, train_args(data, other, "--steps", "2", "--resume", out / "checkpoint.pt")),
                   "already holds a training run")
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


# --- C8: outputs that cannot be written -------------------------------------------------------------
def test_unwritable_outputs_are_refused_before_training(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert_refused(run_cli(capsys, train_args(data, blocker)), "is a file, not a folder")
    assert_refused(run_cli(capsys, train_args(data, blocker / "run")), "is a file, not a folder")
    out = tmp_path / "run"
    (out / "model.pt").mkdir(parents=True)
    assert_refused(run_cli(capsys, train_args(data, out)), "has a folder named model.pt")
    assert_refused(run_cli(capsys, train_args(data, out, "--overwrite")), "has a folder named model.pt")
    assert blocker.read_text() == "keep me" and [p.name for p in out.iterdir()] == ["model.pt"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert_refused(run_cli(capsys, train_args(data, "/proc/drdm_run")), "cannot write into --out")


# --- C5, C10: settings -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, fragment", [
    ("lr: .nan", "lr must be a finite positive"), ("lr: .inf", "lr must be a finite positive"),
    ("lr: -0.001", "lr must be a finite positive"), ("lr: 0", "lr must be a finite positive"),
    ("reg_weight: .nan", "reg_weight must be a finite non-negative"),
    ("fold_weight: -1", "fold_weight must be a finite non-negative"),
    ("v_scale: .nan", "v_scale must be a finite positive"), ("noise_ratio: .inf", "noise_ratio"),
    ("amplitude: .nan", "amplitude must be a finite positive"), ("control_size: 4", "control_size"),
    ("size: 12", "size must be a multiple of 8"), ("size: 65536", "size must be a multiple of 8 from 8 to 4096"),
    ("seed: 18446744073709551616", "seed must be an integer from 0 to 2**64 - 1"), ("seed: -1", "seed must be"),
])
def test_impossible_training_settings_are_one_line_errors(data, tmp_path, capsys, text, fragment):
    key = text.split(":")[0]
    base = [f"{k}: {v}" for k, v in {"size": 16, "control_size": 16, "steps": 1}.items() if k != key]
    (tmp_path / "c.yaml").write_text("\n".join([text, *base]) + "\n")
    argv = ["train", "--config", tmp_path / "c.yaml", "--data", data, "--out", tmp_path / "run", "--no-progress"]
    assert_refused(run_cli(capsys, argv), fragment)
    assert not (tmp_path / "run").exists()


def test_train_seed_range(data, tmp_path, capsys):
    assert_refused(run_cli(capsys, train_args(data, tmp_path / "a", "--seed", 2 ** 64)), "seed must be")
    assert main(train_args(data, tmp_path / "b", "--seed", 2 ** 64 - 1)) == 0


# --- C5, C9: evaluate -------------------------------------------------------------------------------
@pytest.fixture
def model(tmp_path):
    save_checkpoint(tmp_path / "m.pt", RecResACNet(2), ModelMeta(ndims=2, size=16, control_size=16))
    return tmp_path / "m.pt"


def evaluate(model: Path, data: Path, *extra) -> list[str]:
    return ["evaluate", "--model", str(model), str(data), "--samples", "1", "--buckets", "1", "--json",
            *map(str, extra)]


def test_evaluate_any_seed_in_range_runs(data, model, capsys):
    for seed in (20240101, 2 ** 64 - 1):
        code, _ = run_cli(capsys, evaluate(model, data, "--seed", seed))
        assert code == 0
    assert_refused(run_cli(capsys, evaluate(model, data, "--seed", 2 ** 64)), "--seed must be")
    assert_refused(run_cli(capsys, evaluate(model, data, "--seed=-1")), "--seed must be")


@pytest.mark.parametrize("size", ["12", "-8", "4", "100000"])
def test_evaluate_impossible_size(data, model, capsys, size):
    assert_refused(run_cli(capsys, evaluate(model, data, f"--size={size}")), "--size must be a multiple of 8")


# --- resume from a checkpoint whose training state is corrupt ---------------------------------------
def _set(path, value):
    def change(training):
        *parents, last = path
        for key in parents:
            training = training[key]
        training[last] = value
    return change


CORRUPT_STATES = {
    "step a string": (_set(["step"], "7"), "training step must be an integer"),
    "step negative": (_set(["step"], -1), "training step must be an integer"),
    "no step": (lambda t: t.pop("step"), "training step must be an integer"),
    "optimizer a list": (_set(["optimizer"], []), "corrupt training state"),
    "optimizer groups": (_set(["optimizer", "param_groups"], []), "corrupt training state"),
    "random state": (_set(["rng", 0, "sample"], torch.zeros(3, dtype=torch.uint8)), "corrupt training state"),
    "random state a string": (_set(["rng", 0, "field"], "abc"), "corrupt training state"),
    "training a list": (None, "training state is a list"),
}


def test_resume_from_a_corrupt_training_state_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data, out)) == 0
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    for case, (change, fragment) in CORRUPT_STATES.items():
        payload = torch.load(out / "checkpoint.pt", weights_only=True)
        if change is None:
            payload["training"] = [1, 2]
        else:
            change(payload["training"])
        torch.save(payload, tmp_path / "bad.pt")
        assert_refused(run_cli(capsys, train_args(data, tmp_path / "again", "--steps", "2", "--resume",
                                                  tmp_path / "bad.pt")), fragment)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["training"]["step"] == good["training"]["step"]
    assert not (tmp_path / "again" / "checkpoint.pt").exists()


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "foo"])
def test_devices_torch_cannot_train_or_evaluate_on(data, model, tmp_path, capsys, device):
    assert_refused(run_cli(capsys, evaluate(model, data, "--device", device)), "device")
    assert_refused(run_cli(capsys, train_args(data, tmp_path / "run", "--device", device)), "device")
    assert not (tmp_path / "run").exists()


def test_negative_process_count(data, tmp_path, capsys):
    assert_refused(run_cli(capsys, train_args(data, tmp_path / "run", "--distributed", "--nproc=-2")),
                   "--nproc must be an integer of at least 0")


# --- a run in progress holds its folder ----------------------------------------------------------------
@pytest.mark.parametrize("stop_signal, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_folder_in_use_by_a_running_training_is_refused(data, tmp_path, capsys, stop_signal, code):
    """A second run into a running one's folder is refused; the running one, stopped by Ctrl-C or by
    SIGTERM (schedulers, ``timeout``), saves a resumable checkpoint and releases its lock."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    running = subprocess.Popen([sys.executable, "-m", "drdm_engine", *train_args(data, out, "--steps", 10 ** 6,
                                                                                  "--checkpoint-every", 10 ** 6)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "train_log.csv").exists() and running.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "train_log.csv").exists(), running.stderr.read() if running.poll() is not None else "slow"
        for extra in (["--overwrite"], ["--resume", out / "checkpoint.pt"]):
            assert_refused(run_cli(capsys, train_args(data, out, *extra)), "in use by another training run")
        assert (out / "train_log.csv").exists() and running.poll() is None
    finally:
        running.send_signal(stop_signal)
        out_text, err = running.communicate(timeout=120)
    assert running.returncode == code and "saved" in out_text, err
    assert main(train_args(data, out, "--overwrite")) == 0
    assert log_steps(out) == [1] and not (out / ".drdm-train.lock").exists()


def test_a_failed_run_leaves_no_folder_behind(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_refused(run_cli(capsys, train_args(tmp_path / "empty", tmp_path / "new" / "run")), "no NIfTI/NRRD/MHA")
    assert not (tmp_path / "new" / "run").exists()


def test_cpu_training_that_would_not_fit_in_memory_is_one_line(data, tmp_path, capsys, monkeypatch):
    """The activations kept for the backward pass (about 2000 floats per voxel and sample) are estimated
    before the network is built: a run that would not fit is refused with how to fit it, and runs with
    --force-large."""
    import drdm_engine.jobs.resources as resources
    monkeypatch.setattr(resources, "available_memory", lambda: resources.BASE_MEMORY + 3 * 16 ** 2 * 4 * 2000)
    result = run_cli(capsys, train_args(data, tmp_path / "run", "--batch-size", 8))
    assert_refused(result, "use --batch-size 3 or less")
    assert "--force-large" in result[1][0] and not (tmp_path / "run").exists()
    assert main(train_args(data, tmp_path / "run", "--batch-size", 3)) == 0
    assert main(train_args(data, tmp_path / "big", "--batch-size", 8, "--force-large")) == 0
