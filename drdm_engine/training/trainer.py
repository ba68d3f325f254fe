"""The DRDM training loop (spec section 4) with checkpoints, resume, validation, logs and DDP.

Per step and sample: ``t ~ U{1..T-1}`` (``t = 0`` has a zero target); input ``warp(x0, F_full(t))``;
target ``F_clean(t)``; prediction ``p = net(input, t)`` (normalised); loss from
:func:`losses.recovery_loss`; Adam with a linear learning-rate warm-up
(:meth:`TrainConfig.learning_rate`). On CUDA: bf16 autocast and channels-last memory.
"""
from __future__ import annotations

import csv
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..core import fields
from ..core.diffusion import DiffusionSchedule, diffuse, forward_fields
from ..core.errors import DRDMError
from ..core.limits import sub_seed
from ..jobs import distributed
from ..jobs.resources import check_training_memory
from ..model import checkpoint
from ..model.cpu import heap
from ..model.network import RecResACNet
from ..model.precision import mixed_precision_dtype
from .augmentation import augment
from .config import TrainConfig
from .data import VolumeSet, is_cache, load_cache, load_volumes, split_sources
from .evaluation import METRICS, buckets_for, recovery_metrics
from .losses import LossTerms, recovery_loss
from .model_setup import meta_for, starting_network
from .output_folder import check_run_folder, open_run_folder

RANK_SEED_STRIDE = 7_919
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
LOG_NAME = "train_log.csv"
VALIDATION_NAME = "validation.csv"
RUN_FILES = (CHECKPOINT_NAME, MODEL_NAME, LOG_NAME, VALIDATION_NAME)


def resolve_device(name: str) -> torch.device:
    """``auto``: this process's GPU when CUDA is available (``LOCAL_RANK`` under torchrun), else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DRDMError(f"unknown device {name!r}; use auto, cpu or cuda[:K]") from exc
    if device.type not in ("cpu", "cuda"):
        raise DRDMError(f"device {name!r} is not supported; use auto, cpu or cuda[:K]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DRDMError(f"device {name} asked for but CUDA is not available; use --device cpu")
    return device


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


class _CsvLog:
    """Append rows to a CSV file, writing the header when the file is new."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns

    def write(self, row: dict) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow(row)


class Trainer:
    """One training run. Build it (all checks happen here), then call :meth:`run`."""

    def __init__(self, config: TrainConfig, data: TrainingData | None = None):
        self.config = config
        check_run_folder(Path(config.out), RUN_FILES, config.resume, config.overwrite)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.data = data if data is not None else load_training_data(config)
        self.ndims = self.data.train.ndims
        if self.device.type == "cpu" and not config.force_large:
            check_training_memory(self.ndims, config.size, config.batch_size,
                                  int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        net, training, source_meta = starting_network(config, self.ndims)
        self.group = distributed.start(self.device)
        self.memory_format = _memory_format(self.device, self.ndims)
        self.model: RecResACNet = net.to(self.device, memory_format=self.memory_format)
        self.net = self._wrap(self.model)
        self.meta = meta_for(config, self.ndims, self._describe_data(), source_meta)
        self.schedule: DiffusionSchedule = self.meta.schedule
        self.integrator = fields.power if config.integrator == "fast" else fields.power_sequential
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad],
                                          lr=config.learning_rate(0))
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        seed = sub_seed(config.seed + RANK_SEED_STRIDE * self.group.rank)
        self.sample_generator = torch.Generator().manual_seed(seed)
        self.field_generator = torch.Generator(device=self.device).manual_seed(sub_seed(seed + 1))
        self.step = 0
        if training is not None:
            self._restore(training)
        self.out = Path(config.out)
        if self.group.main:
            open_run_folder(self.out, RUN_FILES, config.overwrite)
        self.train_log = _CsvLog(self.out / LOG_NAME, ["step", "t_mean", "total", "mrse", "cosine", "gradient",
                                                        "folding", "samples_per_s"])
        self.validation_log = _CsvLog(self.out / VALIDATION_NAME, ["step", "bucket", "recovery_error", "cosine",
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
        self.optimizer.load_state_dict(training["optimizer"])
        if training.get("scaler"):
            self.scaler.load_state_dict(training["scaler"])
        states = training.get("rng", [])
        if len(states) == self.group.world_size:
            state = states[self.group.rank]
            self.sample_generator.set_state(state["sample"])
            self.field_generator.set_state(state["field"])
            torch.set_rng_state(state["torch"])
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
                           "warmup_steps": self.config.warmup_steps, "warmup_lr": self.config.warmup_lr}
        training = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    "rng": rng, "weights_digest_per_rank": digests, "config": self.config.to_dict()}
        checkpoint.save_checkpoint(self.out / CHECKPOINT_NAME, self.model, self.meta, training=training)
        checkpoint.save_checkpoint(self.out / MODEL_NAME, self.model, self.meta)
        return self.out / CHECKPOINT_NAME

    # --- one step --------------------------------------------------------------------------------
    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network input ``(B, C, N^nd)``, steps ``t`` ``(B,)`` and target ``F_clean`` ``(B, nd, N^nd)`` (voxels)."""
        volumes = self.data.train.volumes
        index = torch.randint(volumes.shape[0], (self.config.batch_size,), generator=self.sample_generator)
        x0 = volumes[index]
        if self.config.augment:
            x0 = augment(x0, self.sample_generator)
        t = torch.randint(1, self.schedule.timesteps, (self.config.batch_size,), generator=self.sample_generator)
        x0, t = x0.to(self.device), t.to(self.device)
        with torch.no_grad():
            full, clean = forward_fields(t, self.ndims, self.config.size, self.schedule, self.field_generator,
                                         self.integrator)
            moved = diffuse(x0, full).contiguous(memory_format=self.memory_format)
        return moved, t, clean

    def train_step(self) -> tuple[LossTerms, torch.Tensor]:
        """One optimiser step; returns the loss terms and the batch's ``t``."""
        moved, t, clean = self.batch()
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            p = self.net(moved, t)
        terms = recovery_loss(p.float(), clean, self.config.reg_weight, self.config.fold_weight,
                              self.config.compose_padding)
        if not torch.isfinite(terms.total):
            raise DRDMError(f"loss became {float(terms.total)} at step {self.step + 1}; lower --lr or check the data")
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
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

    def _train_until(self, deadline: float | None, bar: tqdm) -> None:
        """Optimiser steps until ``config.steps`` or the deadline, logging, validating and saving as due."""
        config = self.config
        while self.step < config.steps and not self._time_is_up(deadline):
            started = time.perf_counter()
            terms, t = self.train_step()
            rate = config.batch_size * self.group.world_size / max(time.perf_counter() - started, 1e-9)
            values = terms.as_floats()
            if self.group.main:
                self.train_log.write({"step": self.step, "t_mean": f"{float(t.float().mean()):.2f}",
                                      **{k: f"{v:.6g}" for k, v in values.items()},
                                      "samples_per_s": f"{rate:.4g}"})
            bar.set_postfix(loss=f"{values['total']:.3g}", mrse=f"{values['mrse']:.3g}",
                            cos=f"{values['cosine']:.3f}", fold=f"{values['folding']:.2g}",
                            samples_s=f"{rate:.3g}")
            bar.update(1)
            if self._due(config.validate_every) and self.step < config.steps:
                report = self.validate()
                if report:
                    bar.write(f"step {self.step}: " + _format_report(report))
            if self._due(config.checkpoint_every) and self.step < config.steps:
                self.save()

    def run(self) -> int:
        """Train up to ``config.steps``; checkpoint every K steps and at the end; Ctrl-C saves. Returns the step.
        On the CPU the steps run inside :func:`heap.retained` (freed memory kept for the next step)."""
        config = self.config
        bar = tqdm(total=config.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.group.main and config.progress))
        deadline = time.monotonic() + config.time_limit if config.time_limit else None
        try:
            with heap.retained_on(self.device):
                self._train_until(deadline, bar)
        except KeyboardInterrupt:
            bar.close()
            path = self.save(all_ranks=False)
            if path is not None:
                print(f"drdm: interrupted at step {self.step}; saved {path} (continue with --resume {path})")
            raise
        bar.close()
        last_report = self.validate()
        path = self.save()
        if path is not None:
            if last_report:
                print(f"step {self.step}: " + _format_report(last_report))
            print(f"drdm: trained {self.step} steps; model {self.out / MODEL_NAME}, resume state {path}")
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
