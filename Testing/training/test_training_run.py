"""Training runs on tiny real image files: errors before training, learning, resume, Ctrl-C, DDP, evaluate."""
import copy
import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_drdm
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
@pytest.mark.slow
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


@pytest.mark.slow
def test_3d_steps_give_finite_losses_and_a_loadable_model(tmp_path):
    write_phantoms(tmp_path / "train", (14, 18, 16), 2, spacing=(1.0, 0.8, 2.0))
    config = TrainConfig(data=[str(tmp_path / "train")], size=16, control_size=16, steps=2, out=str(tmp_path / "run"),
                         progress=False, validate_every=0)
    Trainer(config).run()
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(float(r["total"]))) for r in rows)
    model = load_checkpoint(tmp_path / "run" / "model.pt", ndims=3)
    assert model.meta.size == 16 and model.meta.control_size == 16 and model.meta.notes["steps"] == 2


@pytest.mark.slow
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
@pytest.mark.slow
def test_two_process_gloo_ddp_run_keeps_ranks_identical(data2d):
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = run_drdm("--data", data2d / "train", "--size", "32", "--steps", "3", "--batch-size", "1",
                    "--out", data2d / "ddp", "--checkpoint-every", "2", "--validate-every", "0", "--no-progress",
                    "--device", "cpu", launcher=torchrun, module="drdm_engine.train")
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


# --- non-finite batches, log rows, flags, errors ---------------------------------------------------
def _poisoned_at(steps: set[int]):
    """A ``Trainer.batch`` whose input is NaN at the given (0-based) steps."""
    original = Trainer.batch

    def batch(self):
        moved, t, clean = original(self)
        return (torch.full_like(moved, float("nan")) if self.step in steps else moved), t, clean
    return batch


@pytest.mark.slow
def test_a_non_finite_batch_is_skipped_counted_and_training_goes_on(data2d, monkeypatch):
    """The batch of step 3 gives a NaN loss: that step changes no weight and no Adam state, the log row
    counts it, the checkpoint keeps the count, and the steps after it train as usual."""
    monkeypatch.setattr(Trainer, "batch", _poisoned_at({2}))
    trainer = Trainer(config2d(data2d, steps=5, augment=False))
    original = Trainer.train_step
    around = {}

    def state(trainer):
        return weights_digest(trainer.model), {k: v["exp_avg"].clone() for k, v in trainer.optimizer.state.items()}

    def recording(self):
        if self.step == 2:
            around["before"] = state(self)
        result = original(self)
        if self.step == 3:
            around["after"] = state(self)
        return result

    monkeypatch.setattr(Trainer, "train_step", recording)
    trainer.run()
    assert around["before"][0] == around["after"][0]
    assert all(torch.equal(a, around["after"][1][k]) for k, a in around["before"][1].items())
    rows = list(csv.DictReader((data2d / "run" / "train_log.csv").open()))
    assert [int(r["skipped"]) for r in rows] == [0, 0, 1, 0, 0] and rows[2]["total"] == "nan"
    assert all(torch.isfinite(torch.tensor(float(r["total"]))) for r in rows if r["skipped"] == "0")
    _, training = load_checkpoint(data2d / "run" / "checkpoint.pt", ndims=2, with_training=True)
    assert trainer.skipped == training["skipped"] == 1 and training["step"] == 5


@pytest.mark.slow
def test_a_run_whose_batches_all_fail_stops_after_validating_and_saving(data2d, monkeypatch):
    from drdm_engine.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "MAX_SKIPPED_IN_A_ROW", 3)
    monkeypatch.setattr(Trainer, "batch", _poisoned_at(set(range(100))))
    trainer = Trainer(config2d(data2d, steps=10))
    start = weights_digest(trainer.model)
    with pytest.raises(DRDMError, match="last 3 batches all had a non-finite loss"):
        trainer.run()
    _, training = load_checkpoint(data2d / "run" / "checkpoint.pt", ndims=2, with_training=True)
    assert training["step"] == 3 and training["skipped"] == 3 and weights_digest(trainer.model) == start
    assert {int(r["step"]) for r in csv.DictReader((data2d / "run" / "validation.csv").open())} == {3}


def test_an_error_during_training_saves_the_last_finished_step(data2d, monkeypatch, capsys):
    original = Trainer.train_step

    def failing(self):
        if self.step == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        Trainer(config2d(data2d, steps=5, checkpoint_every=100)).run()
    _, training = load_checkpoint(data2d / "run" / "checkpoint.pt", ndims=2, with_training=True)
    assert training["step"] == 2 and "stopped by RuntimeError at step 2; saved" in capsys.readouterr().out


@pytest.mark.slow
def test_log_rows_every_k_steps_hold_the_means_of_their_steps(data2d, monkeypatch):
    """One row per K steps (and at the end): the mean of the steps' loss terms and t, the last step's
    learning rate; the steps themselves read nothing from the device."""
    trainer = Trainer(config2d(data2d, steps=7, augment=False, checkpoint_every=100))
    trainer.log_every = 3
    original = Trainer.train_step
    per_step = []

    def recording(self):
        terms, t = original(self)
        per_step.append({"t_mean": float(t.float().mean()), **terms.as_floats()})
        return terms, t

    monkeypatch.setattr(Trainer, "train_step", recording)
    trainer.run()
    rows = list(csv.DictReader((data2d / "run" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [3, 6, 7]
    for row, steps in zip(rows, (per_step[0:3], per_step[3:6], per_step[6:7])):
        assert float(row["total"]) == pytest.approx(sum(s["total"] for s in steps) / len(steps), rel=1e-5)
        assert float(row["t_mean"]) == pytest.approx(sum(s["t_mean"] for s in steps) / len(steps), abs=0.006)
        assert float(row["lr"]) == pytest.approx(trainer.config.learning_rate(int(row["step"]) - 1))


def test_training_steps_run_under_the_training_flags_which_are_restored_after(data2d, monkeypatch):
    from drdm_engine.training.backend_flags import TRAINING_FLAGS, BackendFlags

    before = BackendFlags.current()
    seen = []
    original = Trainer.train_step

    def recording(self):
        seen.append(BackendFlags.current())
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", recording)
    Trainer(config2d(data2d, steps=2)).run()
    assert seen == [TRAINING_FLAGS, TRAINING_FLAGS] and BackendFlags.current() == before


@pytest.mark.slow
def test_reseeded_resume_continues_schedule_and_state_with_new_batches(data2d):
    """A resumed run with a fresh seed keeps the step count, the Adam state and the warm-up position, and
    draws other batches than the saved streams would (recorded in the seed history)."""
    Trainer(config2d(data2d, out=str(data2d / "split"), steps=2)).run()
    resume = str(data2d / "split" / "checkpoint.pt")
    continued = Trainer(config2d(data2d, out=str(data2d / "split"), resume=resume))
    reseeded = Trainer(config2d(data2d, out=str(data2d / "split"), resume=resume))
    reseeded.reseed(99)
    assert reseeded.step == 2 and reseeded.seeds == [{"step": 0, "seed": 3}, {"step": 2, "seed": 99}]
    assert not torch.equal(continued.batch()[1], reseeded.batch()[1])
    reseeded.run()
    rows = list(csv.DictReader((data2d / "split" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[2]["lr"]) == pytest.approx(reseeded.config.learning_rate(2))
    _, training = load_checkpoint(data2d / "split" / "checkpoint.pt", ndims=2, with_training=True)
    assert training["seeds"] == reseeded.seeds
    assert {float(s["step"]) for s in training["optimizer"]["state"].values()} == {4.0}


@pytest.mark.slow
def test_a_checkpoint_of_the_fused_cuda_optimizer_resumes_on_the_cpu(data2d):
    """A GPU run saves fused Adam's state (its step counters on the GPU); resumed on the CPU the optimiser
    stays the CPU's own, and an old log keeps its columns."""
    Trainer(config2d(data2d, steps=2)).run()
    path = data2d / "run" / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    for group in payload["training"]["optimizer"]["param_groups"]:
        group["fused"] = True
    torch.save(payload, path)
    log = data2d / "run" / "train_log.csv"
    old = ["step", "t_mean", "total", "mrse", "cosine", "gradient", "folding", "samples_per_s"]
    rows = list(csv.DictReader(log.open()))
    with log.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    resumed = Trainer(config2d(data2d, resume=str(path)))
    assert not resumed.optimizer.param_groups[0]["fused"]
    resumed.run()
    with log.open(newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == old and [line[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert all(len(line) == len(old) for line in lines)


@pytest.mark.skipif(tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 4),
                    reason="fused Adam on the CPU needs torch 2.4")
def test_a_fused_optimizer_skips_a_non_finite_step_on_the_device():
    """The CUDA path, run with the CPU's fused Adam: the skip flag reaches the optimiser's kernel without a
    host read, and leaves weights, moments and step counters as they were; a finite batch updates them."""
    from drdm_engine.training.finite_step import backward_and_step, fused_adam_fits

    assert fused_adam_fits(torch.device("cpu")) or tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 5)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(8, 4)

    def step(poison: float = 1.0) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        return backward_and_step(net(x).square().mean() * poison, optimizer, scaler, list(net.parameters()), False)

    assert not bool(step())
    kept = copy.deepcopy((net.state_dict(), optimizer.state_dict()["state"]))
    for poison in (float("nan"), float("inf")):
        skip = step(poison)
        assert bool(skip) and skip.device == x.device
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in kept[0].items())
        state = optimizer.state_dict()["state"]
        assert all(torch.equal(v, state[i][k]) for i, saved in kept[1].items() for k, v in saved.items())
    assert not bool(step())
    assert not torch.equal(kept[0]["weight"], net.weight) and float(optimizer.state_dict()["state"][0]["step"]) == 2


@pytest.mark.slow
def test_a_checkpoint_saved_on_a_gpu_resumes_on_the_cpu_with_a_fresh_field_stream(data2d, capsys):
    """A CUDA generator's state (16 bytes) does not fit the CPU's: the field stream starts afresh with a
    note instead of the run being refused as corrupt."""
    Trainer(config2d(data2d, steps=2)).run()
    path = data2d / "run" / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    payload["training"]["rng"][0]["field"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(payload, path)
    resumed = Trainer(config2d(data2d, resume=str(path)))
    assert resumed.step == 2 and "saved on another kind of device" in capsys.readouterr().out
    resumed.run()


def test_a_log_window_averages_the_steps_it_kept():
    """Skipped steps are counted, not averaged in; a window of skipped steps only has NaN means."""
    from drdm_engine.training.losses import LossTerms
    from drdm_engine.training.step_log import StepWindow

    window = StepWindow(torch.device("cpu"))
    for total, skipped in ((1.0, False), (float("nan"), True), (3.0, False)):
        terms = LossTerms(*(torch.tensor(total) for _ in range(5)))
        window.add(torch.tensor([10, 30]), terms, torch.tensor(skipped))
    row = window.close(step=3, samples_per_step=2, lr=1e-4)
    assert (row.steps, row.skipped, row.means["total"], row.means["t_mean"]) == (3, 1, 2.0, 20.0)
    window.add(torch.tensor([5]), LossTerms(*(torch.tensor(float("nan")) for _ in range(5))), torch.tensor(True))
    row = window.close(step=4, samples_per_step=2, lr=1e-4)
    assert row.skipped == 1 and row.csv()["total"] == "nan" and window.steps == 0
