"""The DRDM training loop (spec section 4) with checkpoints, resume, validation, logs and DDP.

Per step and sample: ``t ~ U{1..T-1}`` (``t = 0`` has a zero target); input ``warp(x0, F_full(t))``;
target ``F_clean(t)``; prediction ``p = net(input, t)`` (normalised); loss from
:func:`losses.recovery_loss`; Adam with a linear learning-rate warm-up
(:meth:`TrainConfig.learning_rate`). A batch whose loss or gradients are not finite changes nothing
(:mod:`finite_step`) and is counted in the log. On CUDA: bf16 autocast, channels-last memory, fused
Adam, the volumes and their augmentation on the GPU, and no host read of a GPU value between log rows
(:mod:`step_log`).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..core import fields
from ..core.device import resolve_device
from ..core.diffusion import DiffusionSchedule, diffuse, forward_fields
from ..core.errors import DRDMError
from ..core.limits import sub_seed
from ..jobs import distributed
from ..model import checkpoint
from ..model.layer_choice import LAYERS
from ..model.network import RecResACNet
from ..model.precision import mixed_precision_dtype
from .augmentation import augment
from .backend_flags import TRAINING_FLAGS, backend_flags
from .config import TrainConfig
from .data import VolumeSet, is_cache, load_cache, load_volumes, split_sources
from .evaluation import METRICS, buckets_for, recovery_metrics
from .finite_step import backward_and_step, fused_adam_fits
from .losses import LossTerms, recovery_loss
from .model_setup import meta_for, starting_network
from .output_folder import check_run_folder, open_run_folder
from .step_log import LOG_COLUMNS, CsvLog, LogRow, StepWindow

RANK_SEED_STRIDE = 7_919
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
LOG_NAME = "train_log.csv"
VALIDATION_NAME = "validation.csv"
RUN_FILES = (CHECKPOINT_NAME, MODEL_NAME, LOG_NAME, VALIDATION_NAME)
CUDA_LOG_EVERY = 20
"""Steps per log row on CUDA (each row waits for the GPU once); the CPU logs every step."""
MAX_SKIPPED_IN_A_ROW = 100
"""Skipped batches in a row after which the run stops (validated and saved): the data or the learning
rate is broken, not one batch."""


TRAINING_DEVICES = ("cpu", "cuda")


@dataclass
class TrainingData:
    """Cached training and held-out volumes."""

    train: VolumeSet
    held_out: VolumeSet | None


def load_training_data(config: TrainConfig) -> TrainingData:
    """Find and cache every volume (errors surface here, before any training). A volume cache file
    (``scripts/build_volume_cache.py``) as the only ``data`` brings its own held-out subjects."""
    if len(config.data) == 1 and is_cache(config.data[0]):
        train, held = load_cache(config.data[0], config.size)
        return TrainingData(train, held if len(held) else None)
    train_paths, held_paths = split_sources(config.data, config.validation, config.holdout)
    train = load_volumes(train_paths, config.size)
    held = load_volumes(held_paths, config.size) if held_paths else None
    if held is not None and held.ndims != train.ndims:
        raise DRDMError(f"validation volumes are {held.ndims}D but training volumes are {train.ndims}D")
    return TrainingData(train, held)


class Trainer:
    """One training run. Build it (all checks happen here), then call :meth:`run`."""

    def __init__(self, config: TrainConfig, data: TrainingData | None = None):
        self.config = config
        check_run_folder(Path(config.out), RUN_FILES, config.resume, config.overwrite)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device, TRAINING_DEVICES)
        self.data = data if data is not None else load_training_data(config)
        self.ndims = self.data.train.ndims
        net, training, source_meta = starting_network(config, self.ndims)
        self.group = distributed.start(self.device)
        self.memory_format = _memory_format(self.device, self.ndims)
        self.model: RecResACNet = net.to(self.device, memory_format=self.memory_format)
        self.net = self._wrap(self.model)
        self.meta = meta_for(config, self.ndims, self._describe_data(), source_meta)
        self.schedule: DiffusionSchedule = self.meta.schedule
        self.integrator = fields.power if config.integrator == "fast" else fields.power_sequential
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        fused = self.device.type == "cuda" and fused_adam_fits(self.device)  # skips without host reads
        self.optimizer = torch.optim.Adam(self.trained, lr=config.learning_rate(0), fused=True if fused else None)
        self.amp_dtype = self._amp_dtype()
        self.scaler = (torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
                       if hasattr(torch.amp, "GradScaler")  # torch < 2.3: CUDA's own scaler only
                       else torch.cuda.amp.GradScaler(enabled=self.amp_dtype == torch.float16))
        self.volumes = self.data.train.volumes.to(self.device)
        self._seed_streams(config.seed)
        self.seeds: list[dict] = [{"step": 0, "seed": config.seed}]
        """Seed of the random streams and the step it took over at (a resumed run keeps its history)."""
        self.step = 0
        """Batches trained so far (skipped ones included): the learning-rate schedule's position."""
        self.skipped = 0
        """Batches whose loss or gradients were not finite, as of the last log row."""
        self.log_every = 1 if self.device.type == "cpu" else CUDA_LOG_EVERY
        """Steps per row of ``train_log.csv``; the time limit is checked after every step all the same."""
        self.window = StepWindow(self.device)
        self._skipped_in_a_row = 0
        if training is not None:
            self._restore(training)
        self.out = Path(config.out)
        if self.group.main:
            open_run_folder(self.out, RUN_FILES, config.overwrite)
        self.train_log = CsvLog(self.out / LOG_NAME, LOG_COLUMNS)
        self.validation_log = CsvLog(self.out / VALIDATION_NAME, ["step", "bucket", "recovery_error", "cosine",
                                                                  "ratio"])

    def _describe_data(self) -> str:
        names = [Path(p).name for p in self.data.train.paths]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        return f"{len(names)} volumes: {shown}"

    def _wrap(self, net: RecResACNet) -> torch.nn.Module:
        if not self.group.distributed:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)

    def _amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype on CUDA (bf16, or fp16 with gradient scaling), ``None`` (fp32) elsewhere. CPU
        bf16 autocast was measured 2.15x faster per 64³ step on an AVX512-BF16 CPU but is not used: a
        3D test step turned NaN nondeterministically under it, and 2-process gloo runs aborted at exit
        in 3 of 54 runs (0 of 48 in fp32)."""
        if not (self.config.amp and self.device.type == "cuda"):
            return None
        return mixed_precision_dtype(self.device)

    # --- state -----------------------------------------------------------------------------------
    def _seed_streams(self, seed: int) -> None:
        """Random streams of this process from ``seed``: batches, ``t`` and augmentation on the CPU (a few
        numbers per batch, read by the host without waiting for the GPU), fields on the device."""
        rank_seed = sub_seed(seed + RANK_SEED_STRIDE * self.group.rank)
        self.sample_generator = torch.Generator().manual_seed(rank_seed)
        self.field_generator = torch.Generator(device=self.device).manual_seed(sub_seed(rank_seed + 1))

    def reseed(self, seed: int) -> None:
        """Fresh random streams from ``seed`` from this step on, recorded in the checkpoint's seed history:
        a new session of a resumed run then draws new batches instead of continuing (or replaying) the
        saved streams."""
        self._seed_streams(seed)
        self.seeds.append({"step": self.step, "seed": seed})

    def _rng_state(self) -> dict:
        return {"sample": self.sample_generator.get_state(), "field": self.field_generator.get_state(),
                "torch": torch.get_rng_state()}

    def _restore(self, training: dict) -> None:
        try:
            self._restore_state(training)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            raise DRDMError(f"{self.config.resume}: corrupt training state ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:100] if str(exc) else 'no detail'})") from exc

    def _restore_state(self, training: dict) -> None:
        self.step = int(training["step"])
        self.skipped = int(training.get("skipped", 0))
        self.seeds = [dict(entry) for entry in training.get("seeds", [])]
        saved = dict(training["optimizer"])  # the run may have used the other Adam (fused on CUDA, not on the CPU)
        fused = self.optimizer.defaults["fused"]
        saved["param_groups"] = [{**group, "fused": fused} for group in saved["param_groups"]]
        self.optimizer.load_state_dict(saved)
        if training.get("scaler"):
            self.scaler.load_state_dict(training["scaler"])
        states = training.get("rng", [])
        if len(states) == self.group.world_size:
            state = states[self.group.rank]
            self.sample_generator.set_state(state["sample"])
            torch.set_rng_state(state["torch"])
            if state["field"].numel() == self.field_generator.get_state().numel():
                self.field_generator.set_state(state["field"])
            elif self.group.main:  # a CUDA generator's state does not fit the CPU's, nor the other way
                print("drdm: note: the checkpoint's field random state was saved on another kind of device; "
                      "continuing with a fresh field stream")
        elif self.group.main:
            print(f"drdm: note: checkpoint random state is for {len(states)} process(es), this run has "
                  f"{self.group.world_size}; continuing with fresh random streams")

    def save(self, all_ranks: bool = True) -> Path | None:
        """Write ``checkpoint.pt`` (weights, optimiser, step, random state of every rank) and ``model.pt``
        (weights and metadata only). ``all_ranks=False`` skips the gathering (after Ctrl-C)."""
        rng = self.group.gather(self._rng_state()) if all_ranks else [self._rng_state()]
        digests = self.group.gather(weights_digest(self.model)) if all_ranks else [weights_digest(self.model)]
        if not self.group.main:
            return None
        self.meta.notes = {"steps": self.step, "batch_size": self.config.batch_size,
                           "world_size": self.group.world_size, "lr": self.config.lr,
                           "warmup_steps": self.config.warmup_steps, "warmup_lr": self.config.warmup_lr,
                           "skipped_batches": self.skipped, "seeds": self.seeds}
        training = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    "rng": rng, "weights_digest_per_rank": digests, "config": self.config.to_dict(),
                    "skipped": self.skipped, "seeds": self.seeds}
        checkpoint.save_checkpoint(self.out / CHECKPOINT_NAME, self.model, self.meta, training=training)
        checkpoint.save_checkpoint(self.out / MODEL_NAME, self.model, self.meta)
        return self.out / CHECKPOINT_NAME

    # --- one step --------------------------------------------------------------------------------
    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network input ``(B, C, N^nd)``, steps ``t`` ``(B,)`` and target ``F_clean`` ``(B, nd, N^nd)`` (voxels)."""
        batch = self.config.batch_size
        index = torch.randint(self.volumes.shape[0], (batch,), generator=self.sample_generator)
        x0 = self.volumes.index_select(0, index.to(self.device, non_blocking=True))
        if self.config.augment:
            x0 = augment(x0, self.sample_generator)
        t = torch.randint(1, self.schedule.timesteps, (batch,), generator=self.sample_generator)
        t = t.to(self.device, non_blocking=True)
        with torch.no_grad():
            full, clean = forward_fields(t, self.ndims, self.config.size, self.schedule, self.field_generator,
                                         self.integrator)
            moved = diffuse(x0, full).contiguous(memory_format=self.memory_format)
        return moved, t, clean

    def train_step(self) -> tuple[LossTerms, torch.Tensor]:
        """One batch: an optimiser step, skipped (weights and optimiser state kept) when the loss or a
        gradient is not finite; the skip is counted in the next log row. Reads nothing from the GPU.
        Returns the loss terms and the batch's ``t``."""
        moved, t, clean = self.batch()
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            p = self.net(moved, t)
        terms = recovery_loss(p.float(), clean, self.config.reg_weight, self.config.fold_weight,
                              self.config.compose_padding)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        skip = backward_and_step(terms.total, self.optimizer, self.scaler, self.trained, self.group.distributed)
        self.scaler.update()
        self.window.add(t, terms, skip)
        self.step += 1
        return terms, t

    # --- validation ------------------------------------------------------------------------------
    def validate(self) -> dict[str, dict[str, float]] | None:
        """MRSE (recovery error), cosine and |q|/|c| per t bucket on the held-out volumes (main process
        only; others wait)."""
        report = None
        if self.group.main and self.data.held_out is not None:
            report = recovery_metrics(self.model, self.data.held_out.volumes, self.schedule,
                                      buckets_for(self.schedule.timesteps, self.config.buckets),
                                      self.config.validation_samples, self.config.seed)
            for label, m in report.items():
                self.validation_log.write({"step": self.step, "bucket": label, "recovery_error": f"{m['mrse']:.6g}",
                                           **{k: f"{m[k]:.6g}" for k in METRICS[1:]}})
        self.group.barrier()
        return report

    # --- the run ---------------------------------------------------------------------------------
    def _time_is_up(self, deadline: float | None) -> bool:
        """Whether ``config.time_limit`` has passed (on any rank: all ranks stop at the same step)."""
        if deadline is None:
            return False
        return any(self.group.gather(time.monotonic() >= deadline))

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _log(self, bar: tqdm) -> LogRow:
        """Close the log window (one host read): write its row, count its skipped batches."""
        row = self.window.close(self.step, self.config.batch_size * self.group.world_size,
                                self.config.learning_rate(self.step - 1))
        self.skipped += row.skipped
        self._skipped_in_a_row = self._skipped_in_a_row + row.steps if row.skipped == row.steps else 0
        if self.group.main:
            self.train_log.write(row.csv())
        bar.set_postfix(loss=f"{row.means['total']:.3g}", mrse=f"{row.means['mrse']:.3g}",
                        cos=f"{row.means['cosine']:.3f}", fold=f"{row.means['folding']:.2g}",
                        samples_s=f"{row.samples_per_s:.3g}", skipped=self.skipped)
        return row

    def _train_until(self, deadline: float | None, bar: tqdm) -> str | None:
        """Batches until ``config.steps`` or the deadline, logging, validating and saving as due. The
        deadline is checked after every step in one process, at log rows under DDP (all ranks stop at the
        same step). Returns why training stopped early when every batch failed for a while, else None."""
        config = self.config
        while self.step < config.steps:
            self.train_step()
            bar.update(1)
            validate = self._due(config.validate_every) and self.step < config.steps
            save = self._due(config.checkpoint_every) and self.step < config.steps
            late = not self.group.distributed and deadline is not None and time.monotonic() >= deadline
            if not (self._due(self.log_every) or validate or save or late or self.step == config.steps):
                continue
            self._log(bar)
            if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                return (f"the last {self._skipped_in_a_row} batches all had a non-finite loss or gradient and "
                        f"were skipped (weights of step {self.step - self._skipped_in_a_row} kept); lower --lr "
                        f"or check the data")
            if validate:
                report = self.validate()
                if report:
                    bar.write(f"step {self.step}: " + _format_report(report))
            if save:
                self.save()
            if self._time_is_up(deadline):
                break
        return None

    def run(self) -> int:
        """Train up to ``config.steps`` or ``config.time_limit``, then validate and save; checkpoint every K
        steps. Ctrl-C, a stop signal or an error saves the last finished step before passing on. Returns
        the step. The steps run under :data:`TRAINING_FLAGS` (the flags the GPU timings measure) and, on
        the CPU, inside the layers' training block (:mod:`..model.cpu`: freed memory kept for the next step)."""
        config = self.config
        bar = tqdm(total=config.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.group.main and config.progress))
        deadline = time.monotonic() + config.time_limit if config.time_limit else None
        try:
            with backend_flags(TRAINING_FLAGS), LAYERS.training(self.device):
                stopped = self._train_until(deadline, bar)
        except BaseException as exc:
            bar.close()
            path = self.save(all_ranks=False)
            if path is not None:
                what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by {type(exc).__name__}"
                print(f"drdm: {what} at step {self.step}; saved {path} (continue with --resume {path})")
            raise
        bar.close()
        last_report = self.validate()
        path = self.save()
        if path is not None:
            if last_report:
                print(f"step {self.step}: " + _format_report(last_report))
            print(f"drdm: trained {self.step} steps ({self.skipped} skipped); model {self.out / MODEL_NAME}, "
                  f"resume state {path}")
        if stopped:
            raise DRDMError(stopped)
        return self.step


def weights_digest(net: torch.nn.Module) -> str:
    """SHA-1 of every parameter's bytes: equal on all ranks of a healthy DDP run."""
    digest = hashlib.sha1()
    for tensor in net.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _format_report(report: dict[str, dict[str, float]]) -> str:
    return "  ".join(f"{label} mrse {m['mrse']:.3f} cos {m['cosine']:.3f} |q|/|c| {m['ratio']:.2f}"
                     for label, m in report.items())


def _memory_format(device: torch.device, ndims: int) -> torch.memory_format:
    """Channels-last on CUDA (faster convolutions under autocast), the default layout elsewhere."""
    if device.type != "cuda":
        return torch.contiguous_format
    return torch.channels_last if ndims == 2 else torch.channels_last_3d
