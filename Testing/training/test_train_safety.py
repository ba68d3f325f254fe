"""``drdm train`` / ``drdm evaluate`` guards (issues 9 and 20): an earlier run is never replaced or appended
to by accident, outputs that cannot be written, impossible settings, files and sizes are one-line errors
before any work."""
from __future__ import annotations

import csv
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import one_error_line, random_volume, refused, run_cli, run_drdm, start_drdm
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


def log_steps(out: Path) -> list[int]:
    return [int(row["step"]) for row in csv.DictReader((out / "train_log.csv").open())]


# --- D2: an existing run folder ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused(data, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(data, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = run_drdm(*train_args(data, out))
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1 and "already holds a training run" in errors[0], done.stderr
    assert "--resume" in errors[0] and "--overwrite" in errors[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_resume_continues_and_overwrite_replaces_only_the_run_files(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data, out)) == 0
    assert main(train_args(data, out, "--steps", "2", "--resume", out / "checkpoint.pt")) == 0
    assert log_steps(out) == [1, 2]
    (out / "my_notes.txt").write_text("keep me")
    refused(capsys, *train_args(data, out, "--overwrite", "--resume", out / "checkpoint.pt"), says="not both")
    assert main(train_args(data, out, "--overwrite")) == 0
    assert log_steps(out) == [1] and (out / "my_notes.txt").read_text() == "keep me"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["training"]["step"] == 1
    other = tmp_path / "other"
    assert main(train_args(data, other)) == 0
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    refused(capsys, *train_args(data, other, "--steps", "2", "--resume", out / "checkpoint.pt"),
            says="already holds a training run")
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


# --- C8: outputs that cannot be written -------------------------------------------------------------
def test_unwritable_outputs_are_refused_before_training(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    refused(capsys, *train_args(data, blocker), says="is a file, not a folder")
    refused(capsys, *train_args(data, blocker / "run"), says="is a file, not a folder")
    out = tmp_path / "run"
    (out / "model.pt").mkdir(parents=True)
    refused(capsys, *train_args(data, out), says="has a folder named model.pt")
    refused(capsys, *train_args(data, out, "--overwrite"), says="has a folder named model.pt")
    assert blocker.read_text() == "keep me" and [p.name for p in out.iterdir()] == ["model.pt"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    refused(capsys, *train_args(data, "/proc/drdm_run"), says="cannot write into --out")


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
    refused(capsys, *argv, says=fragment)
    assert not (tmp_path / "run").exists()


def test_train_seed_range(data, tmp_path, capsys):
    refused(capsys, *train_args(data, tmp_path / "a", "--seed", 2 ** 64), says="seed must be")
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
        code, _ = run_cli(capsys, *evaluate(model, data, "--seed", seed))
        assert code == 0
    refused(capsys, *evaluate(model, data, "--seed", 2 ** 64), says="--seed must be")
    refused(capsys, *evaluate(model, data, "--seed=-1"), says="--seed must be")


@pytest.mark.parametrize("size", ["12", "-8", "4", "100000"])
def test_evaluate_impossible_size(data, model, capsys, size):
    refused(capsys, *evaluate(model, data, f"--size={size}"), says="--size must be a multiple of 8")


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


@pytest.mark.slow
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
        refused(capsys, *train_args(data, tmp_path / "again", "--steps", "2", "--resume", tmp_path / "bad.pt"),
                says=fragment)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["training"]["step"] == good["training"]["step"]
    assert not (tmp_path / "again" / "checkpoint.pt").exists()


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "foo"])
def test_devices_torch_cannot_train_or_evaluate_on(data, model, tmp_path, capsys, device):
    refused(capsys, *evaluate(model, data, "--device", device), says="device")
    refused(capsys, *train_args(data, tmp_path / "run", "--device", device), says="device")
    assert not (tmp_path / "run").exists()


def test_negative_process_count(data, tmp_path, capsys):
    refused(capsys, *train_args(data, tmp_path / "run", "--distributed", "--nproc=-2"),
            says="--nproc must be an integer of at least 0")


# --- a run in progress holds its folder ----------------------------------------------------------------
@pytest.mark.parametrize("stop_signal, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_a_folder_in_use_by_a_running_training_is_refused(data, tmp_path, capsys, stop_signal, code):
    """A second run into a running one's folder is refused; the running one, stopped by Ctrl-C or by
    SIGTERM (schedulers, ``timeout``), saves a resumable checkpoint and releases its lock."""
    out = tmp_path / "run"
    running = start_drdm(*train_args(data, out, "--steps", 10 ** 6, "--checkpoint-every", 10 ** 6),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "train_log.csv").exists() and running.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "train_log.csv").exists(), running.stderr.read() if running.poll() is not None else "slow"
        for extra in (["--overwrite"], ["--resume", out / "checkpoint.pt"]):
            refused(capsys, *train_args(data, out, *extra), says="in use by another training run")
        assert (out / "train_log.csv").exists() and running.poll() is None
    finally:
        running.send_signal(stop_signal)
        out_text, err = running.communicate(timeout=120)
    assert running.returncode == code and "saved" in out_text, err
    assert main(train_args(data, out, "--overwrite")) == 0
    assert log_steps(out) == [1] and not (out / ".drdm-train.lock").exists()


def test_a_failed_run_leaves_no_folder_behind(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    refused(capsys, *train_args(tmp_path / "empty", tmp_path / "new" / "run"), says="no NIfTI/NRRD/MHA")
    assert not (tmp_path / "new" / "run").exists()


@pytest.mark.slow
def test_cpu_training_that_would_not_fit_in_memory_is_one_line(data, tmp_path, capsys, monkeypatch):
    """The activations kept for the backward pass (about 2000 floats per voxel and sample) are estimated
    before the network is built: a run that would not fit is refused with how to fit it, and runs with
    --force-large."""
    import drdm_engine.jobs.resources as resources
    monkeypatch.setattr(resources, "available_memory", lambda: resources.BASE_MEMORY + 3 * 16 ** 2 * 4 * 2000)
    line = refused(capsys, *train_args(data, tmp_path / "run", "--batch-size", 8), says="use --batch-size 3 or less")
    assert "--force-large" in line and not (tmp_path / "run").exists()
    assert main(train_args(data, tmp_path / "run", "--batch-size", 3)) == 0
    assert main(train_args(data, tmp_path / "big", "--batch-size", 8, "--force-large")) == 0


# --- issue 20 (reliability, second round): train, evaluate and fine-tune ----------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny 2D and 3D models trained by ``drdm train`` (one step), and their training volumes."""
    root = tmp_path_factory.mktemp("models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        found = {}
        for nd, shape in ((2, (12, 10)), (3, (8, 12, 10))):
            for i in range(2):
                random_volume(root / f"data{nd}d/v{i}.nrrd", shape, seed=i)
            assert main(train_args(root / f"data{nd}d", root / f"run{nd}d", "--batch-size", "1")) == 0
            found[nd] = (root / f"run{nd}d/model.pt", root / f"data{nd}d")
    finally:
        torch.set_num_threads(threads)
    return found


def _published_state(model: Path) -> dict:
    """The bare published RecResACNet state dict of one of our checkpoints (what import-checkpoint reads)."""
    return torch.load(model, map_location="cpu", weights_only=True)["state_dict"]


def _forty_steps(state: dict) -> dict:
    return {**state, "time_embed.weight": state["time_embed.weight"][:40].clone()}


def _two_channels(state: dict) -> dict:
    """The same network with 2 input channels (the published layout: te1 maps the time embedding to the
    input channels, b1.0.conv0 reads them)."""
    state = dict(state)
    state["te1.0.weight"] = state["te1.0.weight"].repeat(2, 1)
    state["te1.0.bias"] = state["te1.0.bias"].repeat(2)
    state["te1.2.weight"] = torch.eye(2) * state["te1.2.weight"][0, 0]
    state["te1.2.bias"] = state["te1.2.bias"].repeat(2)
    state["b1.0.conv0.weight"] = state["b1.0.conv0.weight"].repeat(1, 2, 1, 1) / 2
    return state


@pytest.mark.parametrize("change, extra", [(_forty_steps, ["--batch-size", "1", "--seed", "0"]),
                                           (_two_channels, [])], ids=["timesteps40", "channels2"])
@pytest.mark.slow
def test_fine_tune_from_another_architecture_is_refused_or_loads(models, tmp_path, capsys, change, extra):
    """Wrong results: `drdm train --fine-tune` from a 40-step or 2-channel model: refuse, or a model.pt that loads."""
    model, data = models[2]
    torch.save(change(_published_state(model)), tmp_path / "source.pth")
    code, err = run_cli(capsys, "import-checkpoint", tmp_path / "source.pth", tmp_path / "source.pt", "--size", "16")
    assert code == 0, err
    code, err = run_cli(capsys, *train_args(data, tmp_path / "run", "--fine-tune", tmp_path / "source.pt", *extra))
    if code == 2:
        one_error_line(code, err)
        return
    assert code == 0, err
    code, err = run_cli(capsys, "info", "--model", tmp_path / "run/model.pt")
    assert code == 0, f"drdm train exited 0 but its model.pt does not load: {err.strip()}"


@pytest.mark.slow
def test_train_at_a_huge_size_is_refused_by_the_memory_guard(models, tmp_path):
    """Tracebacks: `drdm train --size 4096` (3D) -> allocation error instead of the memory guard's line."""
    _, data = models[3]
    done = run_drdm(*train_args(data, tmp_path / "run", "--size", "4096"), memory_gib=6)
    line = one_error_line(done.returncode, done.stderr)
    assert "memory" in line, line
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_evaluate_at_a_huge_size_is_refused_by_a_memory_guard(models, tmp_path):
    """Tracebacks: `drdm evaluate` at a huge size -> allocation error (evaluate has no memory guard)."""
    model, data = models[3]
    done = run_drdm("evaluate", "--model", model, data, "--size", "4096", "--samples", "1", "--buckets", "1",
                    "--device", "cpu", memory_gib=6)
    line = one_error_line(done.returncode, done.stderr)
    assert "memory" in line, line


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.slow
def test_a_list_file_that_lists_itself_is_one_line(models, tmp_path, capsys, command):
    """Tracebacks: a .txt list file that lists itself (RecursionError)."""
    listing = tmp_path / "self.txt"
    listing.write_text("# this list names itself\nself.txt\n")
    if command == "train":
        argv = train_args(listing, tmp_path / "run")
    else:
        argv = ["evaluate", "--model", models[3][0], listing, "--samples", "1", "--buckets", "1", "--device", "cpu"]
    refused(capsys, *argv, says="self.txt")


def test_a_volume_cache_with_fewer_names_than_volumes_is_one_line(tmp_path, capsys):
    """Tracebacks: a volume cache whose metadata lists fewer entries than its tensor (IndexError)."""
    from drdm_engine.training.data import save_cache  # the only way to build a cache file

    volumes = torch.rand(3, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    save_cache(tmp_path / "full.pt", volumes, ["v0", "v1", "v2"], ["s0", "s1", "s2"], [False, False, True], [])
    payload = torch.load(tmp_path / "full.pt", weights_only=True)
    for key in ("names", "subjects", "held_out"):
        payload[key] = payload[key][:2]
    torch.save(payload, tmp_path / "cache.pt")
    refused(capsys, *train_args(tmp_path / "cache.pt", tmp_path / "run"), says="cache.pt")


@pytest.mark.slow
def test_evaluate_does_not_call_its_inputs_training_data(models, tmp_path, capsys):
    """Wording: `evaluate` calls its inputs "training data" (a folder mixing 2D and 3D volumes)."""
    mixed = tmp_path / "mixed"
    random_volume(mixed / "v2.nrrd", (12, 10))
    random_volume(mixed / "v3.nrrd", (8, 12, 10))
    line = refused(capsys, "evaluate", "--model", models[3][0], mixed, "--samples", "1", "--buckets", "1",
                   "--device", "cpu", says=("2D", "3D"))
    assert "training" not in line, line


@pytest.mark.slow
def test_evaluate_does_not_suggest_model_none(models, tmp_path, capsys):
    """Extra (evaluate): a 3D model on 2D volumes suggests `--model none`, which evaluate cannot take."""
    flat = tmp_path / "flat"
    random_volume(flat / "v.nrrd", (12, 10))
    line = refused(capsys, "evaluate", "--model", models[3][0], flat, "--samples", "1", "--buckets", "1",
                   "--device", "cpu", says=("3D", "2D"))
    assert "--model none" not in line, line
