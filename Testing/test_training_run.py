"""Training runs on tiny real image files: errors before training, learning, resume, Ctrl-C, DDP, evaluate."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from training_fixtures import write_phantoms

from drdm_engine.cli import train as cli
from drdm_engine.core.errors import DRDMError
from drdm_engine.model.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from drdm_engine.model.network import RecResACNet
from drdm_engine.training.config import TrainConfig, from_arguments, from_mapping
from drdm_engine.training.evaluation import buckets_for, recovery_error
from drdm_engine.training.trainer import Trainer, weights_digest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data2d(tmp_path):
    write_phantoms(tmp_path / "train", (40, 30), 3, ".nrrd")
    write_phantoms(tmp_path / "held", (28, 36), 1, ".nii.gz")
    return tmp_path


def config2d(root: Path, **changes) -> TrainConfig:
    values = dict(data=[str(root / "train")], validation=[str(root / "held")], size=32, steps=4, batch_size=2,
                  out=str(root / "run"), checkpoint_every=2, validate_every=0, validation_samples=1,
                  progress=False, seed=3)
    values.update(changes)
    return TrainConfig(**values)


def _parse(argv):
    parser = __import__("argparse").ArgumentParser()
    cli.add_train_arguments(parser)
    return parser.parse_args(argv)


# --- errors before training ----------------------------------------------------------------------
def test_unknown_config_key_and_bad_value_are_one_line_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("size: 32\nlearning_rate: 0.1\n")
    with pytest.raises(DRDMError, match="unknown key 'learning_rate'"):
        from_arguments(_parse(["--config", str(tmp_path / "c.yaml"), "--data", "x"]))
    with pytest.raises(DRDMError, match="config key 'size'"):
        from_mapping({"size": "big"})


def test_command_line_overrides_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("size: 32\nsteps: 7\naugment: false\ndata: [a, b]\n")
    config = from_arguments(_parse(["--config", str(tmp_path / "c.yaml"), "--steps", "9", "--augment"]))
    assert (config.size, config.steps, config.augment, config.data) == (32, 9, True, ["a", "b"])


def test_empty_folder_unreadable_file_and_mixed_dimensions(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DRDMError, match="no NIfTI/NRRD/MHA volumes found in folder"):
        Trainer(config2d(tmp_path, data=[str(tmp_path / "empty")], validation=[]))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DRDMError, match="cannot read image"):
        Trainer(config2d(tmp_path, data=[str(bad)], validation=[]))
    write_phantoms(tmp_path / "mixed", (12, 10), 1)
    write_phantoms(tmp_path / "mixed3", (8, 10, 12), 1, ".mha")
    with pytest.raises(DRDMError, match="mixes 2D and 3D"):
        Trainer(config2d(tmp_path, data=[str(tmp_path / "mixed"), str(tmp_path / "mixed3")], validation=[]))


def test_checkpoint_of_wrong_dimension_is_refused(data2d):
    model3d = data2d / "m3.pt"
    save_checkpoint(model3d, RecResACNet(3), ModelMeta(ndims=3, size=32))
    with pytest.raises(DRDMError, match="3D but the image is 2D"):
        Trainer(config2d(data2d, fine_tune=str(model3d)))
    published3d = data2d / "published3d.pth"
    torch.save(RecResACNet(3).state_dict(), published3d)
    with pytest.raises(DRDMError, match="3D but the training data is 2D"):
        Trainer(config2d(data2d, fine_tune=str(published3d)))


def test_list_file_and_holdout(data2d):
    listing = data2d / "volumes.txt"
    listing.write_text("# training volumes\ntrain/volume0.nrrd\n\ntrain/volume1.nrrd\ntrain/volume2.nrrd\n")
    trainer = Trainer(config2d(data2d, data=[str(listing)], validation=[], holdout=1))
    assert len(trainer.data.train) == 2 and len(trainer.data.held_out) == 1
    assert trainer.data.train.volumes.shape == (2, 1, 32, 32)
    assert 0.0 <= float(trainer.data.train.volumes.min()) and float(trainer.data.train.volumes.max()) <= 1.0


# --- training ------------------------------------------------------------------------------------
def test_training_logs_losses_and_held_out_metrics_per_bucket(data2d):
    """A short run stays near "no motion" (quiet output init; learning itself is the over-fit positive
    control in test_training_recipe.py) and logs every step and the three validation metrics."""
    trainer = Trainer(config2d(data2d, steps=12, augment=False))
    trainer.run()
    after = recovery_error(trainer.model, trainer.data.held_out.volumes, trainer.schedule, buckets_for(80, 2),
                           samples=3, seed=1)
    assert all(0.5 < v < 1.5 for v in after.values()), after
    rows = list(csv.DictReader((data2d / "run" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert all(torch.isfinite(torch.tensor(float(r[k]))) for r in rows for k in ("total", "mrse", "cosine", "folding"))
    validation = list(csv.DictReader((data2d / "run" / "validation.csv").open()))
    assert {r["bucket"] for r in validation} == {"t01-20", "t21-39", "t40-59", "t60-79"}
    assert all(-1 <= float(r["cosine"]) <= 1 and float(r["ratio"]) >= 0 for r in validation)


def test_3d_steps_give_finite_losses_and_a_loadable_model(tmp_path):
    write_phantoms(tmp_path / "train", (14, 18, 16), 2, spacing=(1.0, 0.8, 2.0))
    config = TrainConfig(data=[str(tmp_path / "train")], size=16, control_size=16, steps=2, out=str(tmp_path / "run"),
                         progress=False, validate_every=0)
    Trainer(config).run()
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(float(r["total"]))) for r in rows)
    model = load_checkpoint(tmp_path / "run" / "model.pt", ndims=3)
    assert model.meta.size == 16 and model.meta.control_size == 16 and model.meta.notes["steps"] == 2


def test_resume_continues_the_same_run_exactly(data2d):
    straight = Trainer(config2d(data2d, out=str(data2d / "straight")))
    straight.run()
    Trainer(config2d(data2d, out=str(data2d / "split"), steps=2)).run()
    resumed = Trainer(config2d(data2d, out=str(data2d / "split"), resume=str(data2d / "split" / "checkpoint.pt")))
    assert resumed.step == 2
    resumed.run()
    assert resumed.step == 4
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    a, b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) and torch.equal(a[i]["step"], b[i]["step"]) for i in a)
    steps = [int(r["step"]) for r in csv.DictReader((data2d / "split" / "train_log.csv").open())]
    assert steps == [1, 2, 3, 4]


def test_keyboard_interrupt_saves_a_resumable_checkpoint(data2d, monkeypatch):
    trainer = Trainer(config2d(data2d, steps=10, checkpoint_every=100))
    original = Trainer.train_step

    def interrupted(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    _, training = load_checkpoint(data2d / "run" / "checkpoint.pt", ndims=2, with_training=True)
    assert training["step"] == 3


def test_fine_tune_from_published_state_dict_starts_from_its_weights(data2d):
    source = RecResACNet(2)
    torch.save(source.state_dict(), data2d / "published.pth")
    trainer = Trainer(config2d(data2d, fine_tune=str(data2d / "published.pth")))
    assert weights_digest(trainer.model) == weights_digest(source) and trainer.step == 0


# --- distributed and evaluate --------------------------------------------------------------------
def test_two_process_gloo_ddp_run_keeps_ranks_identical(data2d):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "drdm_engine.train", "--data", str(data2d / "train"), "--size", "32", "--steps", "3",
               "--batch-size", "1", "--out", str(data2d / "ddp"), "--checkpoint-every", "2",
               "--validate-every", "0", "--no-progress", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    _, training = load_checkpoint(data2d / "ddp" / "checkpoint.pt", ndims=2, with_training=True)
    digests = training["weights_digest_per_rank"]
    assert training["step"] == 3 and len(digests) == 2 and digests[0] == digests[1]
    assert len(training["rng"]) == 2 and not torch.equal(training["rng"][0]["sample"], training["rng"][1]["sample"])


def test_evaluate_reports_buckets_and_is_reproducible(data2d, capsys):
    model = data2d / "m.pt"
    save_checkpoint(model, RecResACNet(2), ModelMeta(ndims=2, size=32))
    parser = __import__("argparse").ArgumentParser()
    sub = parser.add_subparsers()
    cli.register(sub)
    outputs = []
    for _ in range(2):
        args = parser.parse_args(["evaluate", "--model", str(model), str(data2d / "held"), "--samples", "1",
                                  "--buckets", "2", "--json"])
        assert args.func(args) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0]["recovery_error"] == outputs[1]["recovery_error"]
    assert list(outputs[0]["recovery_error"]) == ["t01-39", "t40-79"]


def test_cpu_training_is_fp32_whatever_the_amp_setting(data2d):
    assert Trainer(config2d(data2d, amp=False)).amp_dtype is None
    assert Trainer(config2d(data2d, amp=True)).amp_dtype is None


def test_cpu_training_steps_run_with_freed_memory_retained(data2d, monkeypatch):
    from drdm_engine.model.cpu import heap
    entered = []
    original = heap.retained

    def recording():
        entered.append(True)
        return original()

    monkeypatch.setattr(heap, "retained", recording)
    Trainer(config2d(data2d, steps=1)).run()
    assert entered == [True]
