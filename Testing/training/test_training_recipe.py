"""The training recipe of issue 10: quiet output init (a positive control that learns), the published
(true) cosine, warm-up, t >= 1, amplitude per model, validation metrics, and the volume cache that
lets training run without SimpleITK."""
import csv
import importlib.util
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
import torch
from conftest import ROOT
from training_fixtures import phantom, write_phantoms

from drdm_engine.core.diffusion import DiffusionSchedule, diffuse, forward_fields
from drdm_engine.model.checkpoint import load_checkpoint
from drdm_engine.model.network import RecResACNet
from drdm_engine.training import losses
from drdm_engine.training.backend_flags import TRAINING_FLAGS
from drdm_engine.training.config import TrainConfig
from drdm_engine.training.data import load_cache, save_cache
from drdm_engine.training.evaluation import buckets_for, recovery_metrics
from drdm_engine.training.model_setup import quiet_output
from drdm_engine.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _fixed_batch(size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.stack([torch.from_numpy(phantom((size, size), s)) for s in range(batch)]).unsqueeze(1)
    images = (images - images.amin()) / (images.amax() - images.amin())
    t = torch.tensor([30, 50][:batch])
    full, clean = forward_fields(t, 2, size, DiffusionSchedule(amplitude=2.0), torch.Generator().manual_seed(0))
    return diffuse(images, full), t, clean


@pytest.mark.slow
def test_quiet_output_init_overfits_one_fixed_batch():
    """Positive control: with the output convolution near zero, 80 Adam steps on one fixed 32² batch
    bring the MRSE clearly down and the cosine towards -1. PyTorch's default init starts ~1e4 off."""
    moved, t, clean = _fixed_batch(32, 2)
    torch.manual_seed(0)
    net = quiet_output(RecResACNet(2))
    with torch.no_grad():
        first = losses.recovery_loss(net(moved, t), clean)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(80):
        terms = losses.recovery_loss(net(moved, t), clean)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
    with torch.no_grad():
        last = losses.recovery_loss(net(moved, t), clean)
    assert 0.9 < float(first.mrse) < 1.1, float(first.mrse)
    assert float(last.mrse) < 0.8 * float(first.mrse) and float(last.cosine) < -0.5, (float(last.mrse),
                                                                                       float(last.cosine))
    torch.manual_seed(0)
    with torch.no_grad():
        assert float(losses.recovery_loss(RecResACNet(2)(moved, t), clean).mrse) > 100


def test_cosine_is_a_true_cosine_at_normalised_magnitudes():
    """q and c at a known angle, |c| ~ 1e-3 (normalised units): the loss term equals cos(angle)."""
    angle = torch.linspace(0, math.pi, 7)
    c = torch.stack([torch.ones(7), torch.zeros(7)]).view(1, 2, 7, 1) * 1e-3
    q = torch.stack([torch.cos(angle), torch.sin(angle)]).view(1, 2, 7, 1) * 3e-3
    per_voxel = [float(losses.cosine(q[..., k:k + 1, :], c[..., k:k + 1, :])) for k in range(7)]
    assert per_voxel == pytest.approx(torch.cos(angle).tolist(), abs=1e-5)
    assert float(losses.cosine(q, c)) == pytest.approx(float(torch.cos(angle).mean()), abs=1e-5)
    ratio = losses.magnitude_ratio_per_sample(q, c)
    assert float(ratio) == pytest.approx(3.0, rel=1e-4)


def test_warmup_is_linear_then_constant():
    config = TrainConfig(lr=1e-4, warmup_lr=1e-5, warmup_steps=500)
    assert config.learning_rate(0) == pytest.approx(1e-5)
    assert config.learning_rate(250) == pytest.approx(5.5e-5)
    assert config.learning_rate(500) == config.learning_rate(10_000) == 1e-4
    assert TrainConfig(lr=3e-4, warmup_steps=0).learning_rate(0) == 3e-4
    assert TrainConfig().batch_size >= 4


@pytest.fixture
def cache2d(tmp_path):
    volumes = torch.stack([torch.from_numpy(phantom((32, 32), s)) for s in range(4)]).unsqueeze(1)
    volumes = (volumes - volumes.amin()) / (volumes.amax() - volumes.amin())
    path = tmp_path / "slices.pt"
    save_cache(path, volumes, [f"v{k}" for k in range(4)], ["a", "a", "b", "c"], [False, False, False, True],
               [{"file": "phantom", "package": "tests", "licence": "none"}])
    return path


def test_cache_round_trip_keeps_subjects_held_out_and_resizes(cache2d):
    train, held = load_cache(cache2d, 32)
    assert train.volumes.shape == (3, 1, 32, 32) and held.volumes.shape == (1, 1, 32, 32)
    assert [p.name for p in held.paths] == ["v3"]
    assert float(train.volumes.min()) >= 0 and float(train.volumes.max()) <= 1
    assert load_cache(cache2d, 16)[0].volumes.shape == (3, 1, 16, 16)


@pytest.mark.slow
def test_trainer_draws_t_from_one_and_records_amplitude_two(cache2d, tmp_path):
    config = TrainConfig(data=[str(cache2d)], size=16, batch_size=400, steps=1, out=str(tmp_path / "run"),
                         progress=False, augment=False, validate_every=0)
    trainer = Trainer(config)
    _, t, clean = trainer.batch()
    assert int(t.min()) == 1 and int(t.max()) == 79
    assert trainer.meta.amplitude == 2.0 and trainer.data.held_out is not None
    assert float(trainer.model.conv_out.weight.detach().abs().max()) < 1e-4
    assert float(trainer.model.conv_out.bias.detach().abs().max()) == 0.0


def test_fine_tuning_a_published_import_keeps_its_amplitude(tmp_path):
    write_phantoms(tmp_path / "train", (32, 32), 2)
    torch.save(RecResACNet(2).state_dict(), tmp_path / "published.pth")
    config = TrainConfig(data=[str(tmp_path / "train")], size=32, steps=1, out=str(tmp_path / "run"),
                         progress=False, fine_tune=str(tmp_path / "published.pth"))
    assert Trainer(config).meta.amplitude is None  # the published N / S
    assert Trainer(TrainConfig(**{**config.to_dict(), "amplitude": 1.5})).meta.amplitude == 1.5


def test_recovery_metrics_of_a_quiet_network_are_no_motion(cache2d):
    _, held = load_cache(cache2d, 32)
    net = quiet_output(RecResACNet(2))
    report = recovery_metrics(net, held.volumes, DiffusionSchedule(amplitude=2.0), buckets_for(80, 2), samples=1)
    for metrics in report.values():
        assert metrics["mrse"] == pytest.approx(1.0, abs=0.05)
        assert metrics["ratio"] < 0.02 and -1 <= metrics["cosine"] <= 1


def test_foreground_cosine_is_the_cosine_over_the_voxels_above_the_threshold(cache2d):
    """Below every intensity it is the cosine over all voxels; above some, a different mean that still
    lies in [-1, 1]; without the option no such key (validation.csv keeps its columns)."""
    _, held = load_cache(cache2d, 32)
    net = RecResACNet(2)
    args = (net, held.volumes, DiffusionSchedule(amplitude=2.0), buckets_for(80, 2), 1)
    everything = recovery_metrics(*args, foreground=-1.0)
    some = recovery_metrics(*args, foreground=0.3)
    plain = recovery_metrics(*args)
    for label, metrics in everything.items():
        assert metrics["cosine_foreground"] == pytest.approx(metrics["cosine"], abs=1e-6)
        assert -1 <= some[label]["cosine_foreground"] <= 1 and some[label]["cosine_foreground"] != metrics["cosine"]
        assert "cosine_foreground" not in plain[label] and plain[label]["cosine"] == metrics["cosine"]


def test_validation_deformations_are_drawn_on_the_cpu_whatever_the_scoring_device():
    """The fields of a validation draw are made on the CPU and only then moved: the same numbers for a GPU
    and the CPU (here a device that cannot draw random numbers at all, ``meta``, still gets them)."""
    from drdm_engine.training.evaluation import validation_fields

    schedule = DiffusionSchedule(control_size=16, amplitude=2.0)
    cpu = validation_fields(0, 1, 30, 0, 2, 16, schedule, torch.device("cpu"))
    again = validation_fields(0, 1, 30, 0, 2, 16, schedule, torch.device("cpu"))
    meta = validation_fields(0, 1, 30, 0, 2, 16, schedule, torch.device("meta"))
    assert all(torch.equal(a, b) for a, b in zip(cpu, again)) and all(f.device.type == "meta" for f in meta)
    assert not torch.equal(cpu[0], validation_fields(0, 1, 30, 1, 2, 16, schedule, torch.device("cpu"))[0])


BLOCK_SIMPLEITK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('SimpleITK', 'slicerio'):
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
from drdm_engine.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_training_from_a_cache_runs_without_simpleitk(cache2d, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", BLOCK_SIMPLEITK, "--data", str(cache2d), "--size", "16",
                           "--steps", "2", "--batch-size", "2", "--out", str(out), "--no-progress",
                           "--validate-every", "0", "--device", "cpu", "--threads", "1"],
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    model = load_checkpoint(out / "model.pt", ndims=2)
    assert model.meta.notes["steps"] == 2 and model.meta.amplitude == 2.0


def test_named_cmr2d_model_resolves_with_its_licence_beside_it():
    """``--model cmr2d`` resolves to the bundled conversion of the published 2D model (metadata of the
    published 2D config), with its licence, notice and card beside it; a 3D image refuses it."""
    from drdm_engine.core.errors import DRDMError
    from drdm_engine.model.registry import NAMED_MODELS, resolve_name
    from drdm_engine.model.loading import resolve_model

    named = NAMED_MODELS["cmr2d"]
    assert resolve_name("CMR2D") == str(named.path) and resolve_name("my/model.pt") == "my/model.pt"
    for name in ("NOTICE", "LICENSE-drdm_cmr_2d", "drdm_cmr_2d.md"):
        assert (named.path.parent / name).is_file(), name
    loaded = resolve_model("cmr2d", 2, torch.device("cpu"))
    assert (loaded.meta.size, loaded.meta.compose_padding, loaded.meta.amplitude) == (256, "zeros", None)
    with pytest.raises(DRDMError, match="2D but the image is 3D"):
        resolve_model("cmr2d", 3, torch.device("cpu"))


def test_named_cmr2d_model_reproduces_the_published_network(reference):
    import numpy as np

    from drdm_engine.model.loading import resolve_model

    loaded = resolve_model("cmr2d", 2, torch.device("cpu"))
    published = torch.load(reference / "drdm_cmr_2d_published.pth", map_location="cpu", weights_only=True)
    assert all(torch.equal(published[k], v) for k, v in loaded.net.state_dict().items())
    data = np.load(reference / "parity_2d_cmr.npz")
    with torch.inference_mode():
        out = loaded.net(torch.from_numpy(data["warped_t40"])[None, None], torch.tensor([40]))[0].numpy()
    assert np.abs(out - data["net_out_warped_t40"]).max() <= 1e-5


GPU_SESSION = ROOT / "scripts" / "gpu_session.py"
DRY_RUN_BUDGET_S = 25


def _session_env(root, **extra) -> dict:
    """The device machine's environment: SimpleITK and slicerio unimportable, one thread, no CUDA."""
    (root / "block").mkdir(exist_ok=True)
    (root / "block" / "sitecustomize.py").write_text(BLOCK_SIMPLEITK.split("from drdm_engine")[0])
    return {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "PYTHONPATH": f"{root / 'block'}:{ROOT}",
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """scripts/gpu_session.sh end to end at tiny sizes on the CPU (DRDM_GPU_DRYRUN=1, as CI runs it)."""
    root = tmp_path_factory.mktemp("gpu_dry")
    out = root / "out"
    env = _session_env(root, OUT=str(out), DRDM_GPU_DRYRUN="1", DRDM_GPU_BUDGET_S=str(DRY_RUN_BUDGET_S))
    done = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return out, json.loads((out / "gpu_session.json").read_text())


@pytest.mark.slow
def test_gpu_session_script_dry_run_without_simpleitk(dry_run):
    """Every stage passes on a machine shaped like the device (no SimpleITK, no slicerio); it continues
    training_data/default3d_latest.pt when that exists; a NaN batch is skipped with the weights and Adam
    state kept; each stage leaves the torch.backends flags as it found them."""
    out, report = dry_run
    stages = report["stages"]
    assert all(stage["ok"] and stage["flags_restored"] for stage in stages.values()), stages
    assert list(stages) == ["checks", "timings", "training", "non_finite_batch"] and stages["checks"]["passed"]
    assert stages["non_finite_batch"]["passed"] and stages["non_finite_batch"]["skipped"] == 1
    latest = ROOT / "training_data" / "default3d_latest.pt"
    assert stages["training"]["start"] == ("resume" if latest.is_file() else "fresh")
    assert (out / "validation.md").is_file()
    assert load_checkpoint(out / "default3d" / "model.pt", ndims=3).meta.amplitude == 2.0


@pytest.mark.slow
def test_gpu_session_ends_within_its_budget_and_its_files_come_back(dry_run):
    """Training stops when the measured validation, folding and save time (x1.5) is left; what is written
    fits what a device call returns: at most 8 files of at most 16 MiB (checkpoint.pt has the real
    network's size), nvidia-smi's output inside session.log, no temporary file left."""
    out, report = dry_run
    training = report["stages"]["training"]
    assert report["ended_s"] <= DRY_RUN_BUDGET_S + 2, report["ended_s"]
    assert training["reserve_s"] >= 1.5 * training["post_training_s"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and max(p.stat().st_size for p in files) <= 16 * 2 ** 20, files
    assert report["outputs"]["fit"] and not [p for p in files if ".tmp" in p.name or p.name == "nvidia-smi.txt"]
    assert 15 * 2 ** 20 < (out / "default3d" / "checkpoint.pt").stat().st_size <= 16 * 2 ** 20


@pytest.mark.slow
def test_gpu_session_trains_with_the_batch_and_flags_it_timed(dry_run):
    """The timings try each batch under the Trainer's own flags and training uses the one the rule picks."""
    gpu_session = _load_gpu_session()
    _, report = dry_run
    timings = report["stages"]["timings"]["training_64"]
    tries = {int(batch): timing for batch, timing in timings["batches"].items()}
    assert sorted(tries) == [1, 2, 4] and timings["flags"] == asdict(TRAINING_FLAGS)
    assert timings["chosen_batch"] == gpu_session.choose_batch(tries, 1) == report["stages"]["training"]["batch"]


def _load_gpu_session():
    spec = importlib.util.spec_from_file_location("gpu_session", GPU_SESSION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_session_batch_rule():
    """The largest batch whose step takes at most 1.5x the base batch's and at most 70 GB; the base when
    a larger one runs out of memory or is too slow."""
    choose = _load_gpu_session().choose_batch

    def tried(**steps):
        return {int(b[1:]): {"median_step_s": s, "peak_memory_gb": 10.0} for b, s in steps.items()}

    assert choose(tried(b8=0.10, b16=0.14, b32=0.2), 8) == 16
    assert choose(tried(b8=0.10, b16=0.14, b32=0.15), 8) == 32
    assert choose(tried(b8=0.10, b16=0.16, b32=0.2), 8) == 8
    memory = tried(b8=0.10, b16=0.11, b32=0.12)
    memory[32]["peak_memory_gb"] = 80.0
    assert choose(memory, 8) == 16
    assert choose({**tried(b8=0.10, b16=0.11), 32: {"error": "out of memory"}}, 8) == 16
    assert choose({8: {"error": "out of memory"}}, 8) == 8


@pytest.mark.slow
def test_gpu_session_resumes_the_full_checkpoint_with_a_fresh_seed(dry_run, tmp_path):
    """A second session continues the first one's checkpoint: step count, Adam state and the warm-up
    schedule go on (no restart at step 0 and the first warm-up rate), with its own seed added to the
    seed history kept in the checkpoint."""
    first_out, first = dry_run
    before = first["stages"]["training"]
    out = tmp_path / "second"
    done = subprocess.run([sys.executable, str(GPU_SESSION), "--dry-run", "--stages", "training", "--out", str(out),
                           "--init", str(first_out / "default3d" / "checkpoint.pt"), "--budget-s", "12",
                           "--reserve-s", "1", "--batches", "2", "--seed", "7"],
                          cwd=ROOT, env=_session_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    training = json.loads((out / "gpu_session.json").read_text())["stages"]["training"]
    assert training["start"] == "resume" and training["first_step"] == before["steps"]
    assert training["steps"] > before["steps"]
    assert training["seeds"] == before["seeds"] + [{"step": before["steps"], "seed": 7}]
    rows = list(csv.DictReader((out / "default3d" / "train_log.csv").open()))
    assert int(rows[0]["step"]) == before["steps"] + 1
    assert float(rows[0]["lr"]) == pytest.approx(TrainConfig().learning_rate(before["steps"]), rel=1e-4)
    saved = torch.load(out / "default3d" / "checkpoint.pt", weights_only=True)["training"]
    assert saved["seeds"] == training["seeds"] and saved["step"] == training["steps"]
    adam_steps = {float(state["step"]) for state in saved["optimizer"]["state"].values()}
    assert adam_steps == {training["steps"] - training["skipped_batches"]}


@pytest.mark.slow
def test_gpu_session_without_cuda_stops_at_once_with_one_line(tmp_path):
    """Not a dry run and no CUDA visible: one error line, nothing run, no report written."""
    out = tmp_path / "out"
    started = time.monotonic()
    done = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=ROOT, env=_session_env(tmp_path, OUT=str(out)),
                          capture_output=True, text=True)
    errors = [line for line in done.stdout.splitlines() if line.startswith("gpu_session:")]
    assert done.returncode == 2 and len(errors) == 1 and "CUDA is not visible" in errors[0], done.stdout
    assert time.monotonic() - started < 60 and not (out / "gpu_session.json").exists()
