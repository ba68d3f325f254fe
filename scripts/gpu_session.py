"""One prepared GPU session (issues 17 and 18), run by ``scripts/gpu_session.sh`` in a single device call.

Without CUDA (and without ``--dry-run``) it stops at once with one line. Stages, each recorded in
``OUT/gpu_session.json`` with the ``torch.backends`` flags found after it (a failing stage is recorded
and the next one runs):
(a) ``checks``: CUDA against CPU in exact fp32 (no TF32, no cuDNN autotuning): forward fields, warp,
    network (fp32 and bf16), recovery sampling, one training step, the augmentation of a GPU batch with
    CPU-drawn parameters, validation scores; a bf16 channels-last ``Trainer`` step.
(b) ``timings``: a full 80-step 3D 128³ sample, bf16 + channels-last (PyTorch's default flags, as
    ``drdm augment`` runs, and with cuDNN autotuning) vs the faithful fp32 path; training at 64³ under
    the flags the ``Trainer`` trains with (``TRAINING_FLAGS``): our step at batch 8, 16 and 32 (step time,
    peak memory, host synchronisations), the faithful fp32 step (sequential integrator, batch 1).
    Training uses the largest batch whose step takes at most 1.5x batch 8's and at most 70 GB.
(c) ``training``: continue the default 3D model from ``--init`` (``training_data/default3d_latest.pt``):
    the full checkpoint (weights, Adam state, step, hence the learning-rate schedule) with a fresh seed
    for this session, recorded in the checkpoint's seed history; its weights alone when it holds no
    training state; a fresh model when it is absent. Validation and folding samples run (timed) before
    training too, so training stops when 1.5x their time plus ``--reserve-s`` is left, then they run
    again and everything is saved: ``OUT/default3d/`` gets checkpoint.pt, model.pt and the logs,
    ``OUT/validation.md`` the table before and after.
(d) ``non_finite_batch``: a ``Trainer`` batch with a NaN input is skipped on the device (fused Adam's
    skip flag: weights and Adam state unchanged, the skip counted). Last, after the results are saved:
    NaN sampling coordinates are known to crash PyTorch's CPU ``grid_sample`` backward, and if the CUDA
    one misbehaved too it could take the device's context with it.

What comes back from a device call is at most 8 files of at most 16 MiB: gpu_session.json, session.log
(with nvidia-smi's output), validation.md and default3d/{checkpoint.pt, model.pt, train_log.csv,
validation.csv}; the scratch runs of the checks and timings go to a temporary folder that is removed.
checkpoint.pt holds the weights and Adam's two moments, 3 x 1,313,646 fp32 values (15.0 MiB), plus about
0.2 MiB of names and state (15.2 MiB in all): its size is the architecture's, the same at every grid
size, batch and step, so the dry run (same network) checks it. gpu_session.json lists every file.

Needs only torch, numpy, pyyaml, tqdm (no SimpleITK): the data travel as the cache file built by
``scripts/build_volume_cache.py``. ``--dry-run`` runs every stage at tiny sizes on the CPU (the "CUDA"
side is the CPU too) to test this script without a GPU.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from drdm_engine.core import fields
from drdm_engine.core.diffusion import DiffusionSchedule, diffuse, forward_fields, random_velocity
from drdm_engine.core.errors import DRDMError
from drdm_engine.model import checkpoint
from drdm_engine.model.network import RecResACNet
from drdm_engine.model.sampler import RecoverySettings, recover, sample_fields, sample_fields_reference
from drdm_engine.training.augmentation import augment
from drdm_engine.training.backend_flags import EXACT_FLAGS, TRAINING_FLAGS, BackendFlags, backend_flags
from drdm_engine.training.config import TrainConfig
from drdm_engine.training.data import load_cache
from drdm_engine.training.evaluation import buckets_for, recovery_metrics
from drdm_engine.training.losses import recovery_loss
from drdm_engine.training.model_setup import quiet_output
from drdm_engine.training.trainer import Trainer, TrainingData, load_training_data

DEPTHS = (16, 32, 48)
STEP_SLOWDOWN = 1.5
"""A larger batch trains when its step takes at most this many times the base batch's."""
MEMORY_LIMIT_GB = 70.0
"""... and when its peak GPU memory stays below this (GB)."""
POST_TRAINING_SAFETY = 1.5
"""Training stops when this many times the measured validation, folding and save time is left (plus
``--reserve-s``)."""
CHECKPOINT_SECONDS = 60.0
"""Seconds of training between checkpoints (kept if the device call is cut short)."""
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2 ** 20
"""What a device call returns: at most this many files, each at most this large."""


class Session:
    """Budget, devices, sizes and the JSON report of one session."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.monotonic()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_session_"))
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.cpu = torch.device("cpu")
        self.check_size = 16 if self.dry else 32
        self.sample_size = 16 if self.dry else 128
        self.train_size = 16 if self.dry else args.size
        # the dry run samples through 8 steps (T = 8) instead of 80: the same code, ~10x less CPU
        self.schedule = DiffusionSchedule(timesteps=8 if self.dry else 80, control_size=16 if self.dry else 64,
                                          amplitude=2.0)
        self.depth = 6 if self.dry else 64
        self.folding_depths = (2, 4) if self.dry else DEPTHS
        self.timed_steps = 1 if self.dry else 5
        self.timed_samples = 1 if self.dry else 2
        self.train_batch = args.batches[0]
        self.step_seconds: float | None = None
        self.seed = args.seed if args.seed is not None else secrets.randbelow(2 ** 63)
        self.flags = BackendFlags.current()
        self.report: dict = {"dry_run": self.dry, "device": self._device_name(), "torch": torch.__version__,
                             "python": platform.python_version(), "budget_s": args.budget_s, "seed": self.seed,
                             "flags_at_start": asdict(self.flags), "stages": {}}

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stage(self, name: str, function: Callable[["Session"], dict]) -> None:
        started = time.monotonic()
        try:
            result = function(self)
            entry = {"ok": True, **result}
        except Exception as exc:  # a failing stage must not stop the session: record it, go on
            entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        entry["seconds"] = round(time.monotonic() - started, 2)
        entry["flags_restored"] = BackendFlags.current() == self.flags
        self.report["stages"][name] = entry
        self.save()
        print(f"[{name}] {'ok' if entry['ok'] else 'FAILED: ' + entry['error']} ({entry['seconds']} s, "
              f"{self.left():.0f} s left)", flush=True)

    def save(self) -> None:
        (self.out / "gpu_session.json").write_text(json.dumps(self.report, indent=2, default=str))


def _trainer_config(s: Session, **changes) -> TrainConfig:
    values = dict(data=[s.args.cache], size=s.train_size, control_size=s.schedule.control_size, steps=10 ** 6,
                  batch_size=s.train_batch, out=str(s.scratch), progress=False, validate_every=0,
                  checkpoint_every=10 ** 6, device=s.device.type, seed=0, amp=True)
    values.update(changes)
    return TrainConfig(**values)


# --- (a) CUDA against CPU --------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference over max abs value of ``b``."""
    return float((a.float().cpu() - b.float().cpu()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def checks(s: Session) -> dict:
    with backend_flags(EXACT_FLAGS):
        return _checks(s)


def _checks(s: Session) -> dict:
    n, nd = s.check_size, 3
    g = torch.Generator().manual_seed(0)
    v = random_velocity(2, nd, s.schedule, s.schedule.v_scale, g)
    counts = torch.tensor([5, 37])
    power = {d: fields.power(v.to(d), counts.to(d)) for d in (s.cpu, s.device)}
    full, clean = forward_fields(torch.tensor([20, 60]), nd, n, s.schedule, torch.Generator().manual_seed(1))
    image = torch.rand(2, 1, n, n, n, generator=g)
    warped = {d: diffuse(image.to(d), full.to(d)) for d in (s.cpu, s.device)}
    torch.manual_seed(0)
    net_cpu = RecResACNet(nd).eval()
    net_dev = RecResACNet(nd).to(s.device).eval()
    net_dev.load_state_dict(net_cpu.state_dict())
    moved, t = warped[s.cpu], torch.tensor([20, 60])
    with torch.no_grad():
        p_cpu = net_cpu(moved, t)
        p_dev = net_dev(moved.to(s.device), t.to(s.device))
        with torch.autocast(s.device.type, dtype=torch.bfloat16):
            p_bf16 = net_dev(moved.to(s.device).contiguous(memory_format=torch.channels_last_3d), t.to(s.device))
    quiet_output(net_cpu)
    net_dev.load_state_dict(net_cpu.state_dict())
    steps = range(9, -1, -1)
    rec_cpu = recover(net_cpu, image[:1], full[:1], steps)
    rec_dev = recover(net_dev, image[:1].to(s.device), full[:1].to(s.device), steps)
    validation = {d: recovery_metrics(net, image[:1].to(d), s.schedule, buckets_for(s.schedule.timesteps, 2), 1)
                  for d, net in ((s.cpu, net_cpu), (s.device, net_dev))}
    losses, weights = {}, {}
    for device, net in ((s.cpu, net_cpu), (s.device, net_dev)):
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        terms = recovery_loss(net(moved.to(device), t.to(device)), clean.to(device))
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses[device.type] = terms.as_floats()
        weights[device.type] = net.conv_out.weight.detach()
    augmented = augment(image.to(s.device), torch.Generator().manual_seed(3))
    device_drawn = augment(image.to(s.device), torch.Generator(s.device).manual_seed(3))
    trainer_step = _trainer_step(s)
    result = {
        "power_max_abs_vox": float((power[s.cpu] - power[s.device].cpu()).abs().max()),
        "warp_max_abs": float((warped[s.cpu] - warped[s.device].cpu()).abs().max()),
        "network_fp32_rel": _rel(p_dev, p_cpu),
        "network_bf16_channels_last_rel": _rel(p_bf16, p_cpu),
        "recovery_10_steps_max_abs_vox": float((rec_cpu - rec_dev.cpu()).abs().max()),
        "validation_max_abs": max(abs(validation[s.device][bucket][name] - value)
                                  for bucket, row in validation[s.cpu].items() for name, value in row.items()),
        "train_step_loss_cpu": losses["cpu"], "train_step_loss_device": losses[s.device.type],
        "train_step_conv_out_rel": _rel(weights[s.device.type], weights["cpu"]),
        "augment_cpu_drawn_max_abs": float((augmented.cpu() - augment(image, torch.Generator().manual_seed(3)))
                                           .abs().max()),
        "augment_device_drawn_finite": bool(torch.isfinite(device_drawn).all()) and device_drawn.shape == image.shape,
        "trainer_step_bf16": trainer_step,
    }
    result["passed"] = bool(result["power_max_abs_vox"] < 1e-3 and result["warp_max_abs"] < 1e-4
                            and result["network_fp32_rel"] < 1e-3 and result["network_bf16_channels_last_rel"] < 0.1
                            and result["recovery_10_steps_max_abs_vox"] < 0.05
                            and result["validation_max_abs"] < 1e-3
                            and abs(losses["cpu"]["total"] - losses[s.device.type]["total"])
                            < 1e-3 * abs(losses["cpu"]["total"]) + 1e-5
                            and result["train_step_conv_out_rel"] < 1e-3
                            and result["augment_cpu_drawn_max_abs"] < 1e-4 and result["augment_device_drawn_finite"]
                            and trainer_step["finite"])
    return result


def _trainer_step(s: Session) -> dict:
    trainer = Trainer(_trainer_config(s))
    values = trainer.train_step()[0].as_floats()
    return {"amp_dtype": str(trainer.amp_dtype), "memory_format": str(trainer.memory_format),
            "fused_adam": bool(trainer.optimizer.defaults["fused"]),
            "finite": all(math.isfinite(v) for v in values.values()), **values}


# --- (b) timings -----------------------------------------------------------------------------------
def _timed(s: Session, function: Callable[[], object]) -> float:
    """Seconds of ``function()``, the device's queue drained before and after."""
    s.sync()
    started = time.perf_counter()
    function()
    s.sync()
    return time.perf_counter() - started


def timings(s: Session) -> dict:
    sample = _sample_timings(s)
    with backend_flags(TRAINING_FLAGS):
        training = _training_timings(s)
    return {"sample_128": sample, "training_64": training,
            "targets": {"sample_le_1s": min(sample["ours_bf16_channels_last_s"]) <= 1.0,
                        "training_ge_100_samples_per_s": training["ours_samples_per_s"] >= 100}}


def _sample_timings(s: Session) -> dict:
    """A full sample at the sample size: ours (bf16, channels-last) under the flags ``drdm augment`` runs
    with (PyTorch's defaults) and with cuDNN autotuning, against the faithful fp32 path."""
    train, held = load_cache(s.args.cache, s.sample_size)
    image = (held.volumes if len(held) else train.volumes)[:1].to(s.device)
    torch.manual_seed(0)
    net = RecResACNet(3).to(s.device).eval()
    net_channels_last = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    fast = RecoverySettings(autocast=torch.bfloat16)

    def ours():
        sample_fields(image, 1, s.depth, net_channels_last, s.schedule, fast, torch.Generator(s.device).manual_seed(0))

    def faithful():
        sample_fields_reference(image, 1, s.depth, net, s.schedule,
                                generator=torch.Generator(s.device).manual_seed(0))

    ours()  # warm-up: kernels
    result = {"size": s.sample_size, "steps": s.schedule.timesteps, "depth": s.depth,
              "ours_bf16_channels_last_s": [_timed(s, ours) for _ in range(s.timed_samples)]}
    with backend_flags(TRAINING_FLAGS):
        ours()  # warm-up: cuDNN autotuning
        result["ours_autotuned_s"] = [_timed(s, ours) for _ in range(s.timed_samples)]
    result["faithful_fp32_s"] = _timed(s, faithful)
    result["speed-up"] = result["faithful_fp32_s"] / min(result["ours_bf16_channels_last_s"])
    return result


def _training_timings(s: Session) -> dict:
    """Our training step at each candidate batch, the faithful one at batch 1; picks the training batch."""
    data = load_training_data(_trainer_config(s))
    tries = {}
    for batch in s.args.batches:
        tries[batch] = _time_batch(s, data, batch)
        if "error" in tries[batch]:
            break
    chosen = choose_batch(tries, s.args.batches[0])
    s.train_batch, s.step_seconds = chosen, tries[chosen].get("median_step_s")
    faithful = Trainer(_trainer_config(s, amp=False, integrator="sequential", batch_size=1), data)
    faithful.train_step()  # warm-up
    faithful_s = [_timed(s, faithful.train_step) for _ in range(s.timed_steps)]
    ours = tries[chosen]
    rates = {"ours_samples_per_s": ours.get("samples_per_s", 0.0),
             "faithful_fp32_samples_per_s": 1 / statistics.median(faithful_s)}
    return {"size": s.train_size, "flags": asdict(TRAINING_FLAGS), "batches": tries, "chosen_batch": chosen,
            "rule": f"largest batch with a step <= {STEP_SLOWDOWN}x batch {s.args.batches[0]}'s and "
                    f"<= {MEMORY_LIMIT_GB:g} GB", "faithful_step_seconds": faithful_s, **rates,
            "speed-up": rates["ours_samples_per_s"] / rates["faithful_fp32_samples_per_s"],
            "host_syncs_per_step": _host_syncs_per_step(s, data, chosen)}


def _time_batch(s: Session, data: TrainingData, batch: int) -> dict:
    """Median step time, samples/s and peak GPU memory (GB; None on the CPU) of our step at ``batch``;
    ``{"error": ...}`` when it does not fit."""
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(s.device)
    try:
        trainer = Trainer(_trainer_config(s, batch_size=batch), data)
        trainer.train_step()  # warm-up: kernels, cuDNN autotuning
        seconds = [_timed(s, trainer.train_step) for _ in range(s.timed_steps)]
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    step = statistics.median(seconds)
    peak = torch.cuda.max_memory_allocated(s.device) / 1e9 if s.device.type == "cuda" else None
    return {"step_seconds": seconds, "median_step_s": step, "samples_per_s": batch / step, "peak_memory_gb": peak}


def choose_batch(tries: dict[int, dict], base: int) -> int:
    """The largest batch tried whose median step took at most ``STEP_SLOWDOWN`` x the ``base`` batch's
    and whose peak memory stayed within ``MEMORY_LIMIT_GB``; ``base`` when none other qualifies."""
    if "error" in tries[base]:
        return base
    limit = STEP_SLOWDOWN * tries[base]["median_step_s"]
    fitting = [batch for batch, timing in tries.items() if "error" not in timing and timing["median_step_s"] <= limit
               and (timing["peak_memory_gb"] or 0.0) <= MEMORY_LIMIT_GB]
    return max(fitting, default=base)


def _host_syncs_per_step(s: Session, data: TrainingData, batch: int) -> int | None:
    """Host synchronisations of one warm training step at ``batch``, counted by CUDA's sync debug mode;
    None on the CPU."""
    if s.device.type != "cuda":
        return None
    trainer = Trainer(_trainer_config(s, batch_size=batch), data)
    trainer.train_step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# --- (c) training ----------------------------------------------------------------------------------
def starting_point(init: Path) -> tuple[str, str]:
    """How training starts from ``init``, and why: ``resume`` (a checkpoint with training state),
    ``fine-tune`` (weights alone), ``fresh`` (no file, or a file that cannot be read)."""
    if not init.is_file():
        return "fresh", f"{init} not found"
    try:
        _, state = checkpoint.load_checkpoint(init, ndims=3, with_training=True)
    except DRDMError as exc:
        return "fresh", f"{init} unreadable: {exc}"
    return ("resume", f"step {state['step']} of {init}") if state is not None else ("fine-tune", f"weights of {init}")


def training(s: Session) -> dict:
    init = Path(s.args.init)
    start, why = starting_point(init)
    out = s.out / "default3d"
    every = max(1, round(CHECKPOINT_SECONDS / s.step_seconds)) if s.step_seconds else 200
    config = _trainer_config(s, out=str(out), seed=s.seed, checkpoint_every=every,
                             validation_samples=2 if s.dry else 4, resume=str(init) if start == "resume" else "",
                             fine_tune=str(init) if start == "fine-tune" else "")
    trainer = Trainer(config)
    if start == "resume":
        trainer.reseed(s.seed)
    first = trainer.step
    held = trainer.data.held_out.volumes[:1] if trainer.data.held_out is not None else None
    started = time.monotonic()
    trainer.validate()
    folding_before = _sample_folding(s, trainer.model, trainer.schedule, held)
    trainer.save()
    post_s = time.monotonic() - started
    reserve = POST_TRAINING_SAFETY * post_s + s.args.reserve_s
    seconds = s.left() - reserve
    stopped = ""
    if seconds > 0:
        trainer.config.time_limit = seconds
        try:
            trainer.run()
        except DRDMError as exc:  # every batch failed for a while: validated and saved, then stopped
            stopped = str(exc)
    else:
        stopped = f"no time left to train ({seconds:.0f} s after the {reserve:.0f} s reserve)"
    folding = _sample_folding(s, trainer.model, trainer.schedule, held)
    rows = _read_csv(out / "validation.csv")
    before = [r for r in rows if int(r["step"]) == first]
    after = [r for r in rows if int(r["step"]) == trainer.step]
    result = {"start": start, "from": why, "first_step": first, "steps": trainer.step, "batch": config.batch_size,
              "seed": s.seed, "seeds": trainer.seeds, "skipped_batches": trainer.skipped,
              "samples_per_s": _training_rate(_read_csv(out / "train_log.csv"), config.batch_size, first),
              "post_training_s": round(post_s, 2), "reserve_s": round(reserve, 1),
              "seconds_budget": round(max(seconds, 0.0), 1), "checkpoint_every": every, "stopped": stopped,
              "validation_before": before, "validation": after, "folding_before": folding_before,
              "folding": folding}
    _write_table(s.out / "validation.md", result)
    return result


def _sample_folding(s: Session, net: RecResACNet, schedule: DiffusionSchedule,
                    image: torch.Tensor | None) -> list[dict]:
    """Folding (% of voxels with det J <= 0) and mean displacement of 2 samples per depth, DRDM vs
    the diffusion-only field it starts from."""
    if image is None:
        return []
    net.eval()
    image = image.to(s.device)
    out = []
    for depth in s.folding_depths:
        drawn = sample_fields(image, 2, depth, net, schedule,
                              RecoverySettings(schedule="from-depth", autocast=torch.bfloat16
                                               if s.device.type == "cuda" else None),
                              torch.Generator(s.device).manual_seed(depth))
        out.append({"depth": depth,
                    "drdm_folding_pct": 100 * float(fields.folding_fraction(drawn.composed).mean()),
                    "diffusion_folding_pct": 100 * float(fields.folding_fraction(drawn.diffused).mean()),
                    "drdm_mean_disp_vox": float(drawn.composed.norm(dim=1).mean()),
                    "diffusion_mean_disp_vox": float(drawn.diffused.norm(dim=1).mean())})
    net.train()
    return out


def _training_rate(rows: list[dict], batch: int, first: int) -> float:
    """Samples/s over the rows of a training log that started after step ``first``: each row's samples
    over the time since the row before it (the GPU's time included, the validation and saves at the start
    and the end not)."""
    steps = [int(r["step"]) for r in rows]
    samples = [batch * (step - previous) for previous, step in zip([first] + steps, steps)]
    seconds = sum(n / float(r["samples_per_s"]) for n, r in zip(samples, rows))
    return sum(samples) / seconds if seconds else 0.0


def _read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


def _write_table(path: Path, result: dict) -> None:
    """validation.md: where the model started and ended, validation per t bucket and folding per depth,
    before and after this session's training."""
    before = {r["bucket"]: r for r in result["validation_before"]}
    lines = [f"# Default 3D model after this session: step {result['steps']}",
             "", f"Started: {result['start']} ({result['from']}), step {result['first_step']}; batch "
             f"{result['batch']}, seed {result['seed']} (seed history: {result['seeds']}); "
             f"{result['skipped_batches']} batches skipped for a non-finite loss or gradient in all; "
             f"{result['samples_per_s']:.1f} samples/s."
             + (f" Stopped: {result['stopped']}." if result["stopped"] else ""),
             "", "| t bucket | MRSE | cosine | |q|/|c| | MRSE before | cosine before | |q|/|c| before |",
             "|---|---|---|---|---|---|---|"]
    for r in result["validation"]:
        b = before.get(r["bucket"], {"recovery_error": "nan", "cosine": "nan", "ratio": "nan"})
        lines.append(f"| {r['bucket']} | {float(r['recovery_error']):.3f} | {float(r['cosine']):.3f} | "
                     f"{float(r['ratio']):.2f} | {float(b['recovery_error']):.3f} | {float(b['cosine']):.3f} | "
                     f"{float(b['ratio']):.2f} |")
    folded_before = {f["depth"]: f for f in result["folding_before"]}
    lines += ["", "| T0 | DRDM folding % | before | diffusion-only folding % | DRDM mean disp. (vox) | before | "
              "diffusion mean disp. |", "|---|---|---|---|---|---|---|"]
    for f in result["folding"]:
        b = folded_before[f["depth"]]
        lines.append(f"| {f['depth']} | {f['drdm_folding_pct']:.3f} | {b['drdm_folding_pct']:.3f} | "
                     f"{f['diffusion_folding_pct']:.3f} | {f['drdm_mean_disp_vox']:.2f} | "
                     f"{b['drdm_mean_disp_vox']:.2f} | {f['diffusion_mean_disp_vox']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


# --- (d) a batch with a non-finite loss -----------------------------------------------------------
def non_finite_batch(s: Session) -> dict:
    """A good step, then a batch of NaN volumes: the Trainer must skip it (on the device, with fused Adam,
    on CUDA) and count it, leaving weights and Adam state as the good step left them."""
    trainer = Trainer(_trainer_config(s, augment=False))
    trainer.train_step()
    weights = copy.deepcopy(trainer.model.state_dict())
    adam = copy.deepcopy(trainer.optimizer.state_dict()["state"])
    trainer.volumes = torch.full_like(trainer.volumes, math.nan)
    trainer.train_step()
    row = trainer.window.close(trainer.step, trainer.config.batch_size, 0.0)
    after = trainer.optimizer.state_dict()["state"]
    result = {"skipped": row.skipped, "steps": row.steps, "fused_adam": bool(trainer.optimizer.defaults["fused"]),
              "weights_kept": all(torch.equal(w, trainer.model.state_dict()[k]) for k, w in weights.items()),
              "adam_state_kept": all(torch.equal(value, after[i][key]) for i, state in adam.items()
                                     for key, value in state.items())}
    result["passed"] = result["skipped"] == 1 and result["weights_kept"] and result["adam_state_kept"]
    return result


# --- what comes back ---------------------------------------------------------------------------------
def outputs(out: Path) -> dict:
    """Every file under ``out`` with its size, and whether they fit what a device call returns (at most
    ``MAX_FILES`` files of at most ``MAX_FILE_BYTES``, no temporary file of a save cut short)."""
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return {"files": sizes, "fit": len(sizes) <= MAX_FILES and max(sizes.values(), default=0) <= MAX_FILE_BYTES
            and not any(".tmp" in name for name in sizes)}


STAGES = {"checks": checks, "timings": timings, "training": training, "non_finite_batch": non_finite_batch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", default="training_data/volumes_64.pt", help="volume cache file")
    parser.add_argument("--init", default="training_data/default3d_latest.pt",
                        help="continue from this checkpoint when it exists (training accumulates across sessions)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for all stages")
    parser.add_argument("--reserve-s", type=float, default=10.0,
                        help="seconds kept after the validation and saves at the end of training (the "
                             "non_finite_batch stage, the report, the exit)")
    parser.add_argument("--size", type=int, default=64, help="training working grid side")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32],
                        help="training batches to time; the first is the base and the fallback")
    parser.add_argument("--seed", type=int, help="seed of this session's training (default: a fresh random one)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES))
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (tests this script)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_session: error: CUDA is not visible to torch {torch.__version__} (CUDA build: "
              f"{torch.version.cuda or 'none'}); nothing was run", file=sys.stderr, flush=True)
        return 2
    if args.dry_run:
        torch.set_num_threads(1)
    session = Session(args)
    print(f"gpu session on {session.report['device']}, torch {torch.__version__}, budget {args.budget_s:.0f} s, "
          f"seed {session.seed}", flush=True)
    try:
        for name in args.stages:
            session.stage(name, STAGES[name])
    finally:
        shutil.rmtree(session.scratch, ignore_errors=True)
    session.report["outputs"] = outputs(session.out)
    session.report["ended_s"] = round(time.monotonic() - session.started, 1)
    session.save()
    ok = all(stage["ok"] for stage in session.report["stages"].values()) and session.report["outputs"]["fit"]
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "traceback"}
                      for k, v in session.report["stages"].items()}, indent=1, default=str)[:6000])
    print(f"outputs: {session.report['outputs']}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
