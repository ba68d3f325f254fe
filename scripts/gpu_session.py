"""One prepared GPU session (issue 10 part 4), run by ``scripts/gpu_session.sh`` in a single device call.

Stages, each recorded in ``OUT/gpu_session.json`` (a failing stage is recorded and the next one runs):
(a) ``checks``: CUDA against CPU — forward fields, warp, network (fp32 and bf16), recovery sampling, one
    training step (loss and updated weights), and a bf16 channels-last ``Trainer`` step.
(b) ``timings``: a full 80-step 3D 128³ sample, bf16 + channels-last vs the faithful fp32 path
    (``sample_fields_reference``); training samples/s at 64³, ours (bf16, channels-last, fast
    integrator, batch B) vs the faithful fp32 step (sequential integrator, batch 1), interleaved.
(c) ``training``: train the default 3D model for the time left (fine-tuned with warm-up from
    ``--init`` when that file exists, else fresh) on the volume cache, validate on its held-out
    subjects (MRSE, cosine, |q|/|c| per t bucket) and measure the folding of its samples at depths
    16 / 32 / 48 against diffusion-only fields; ``OUT/default3d/`` gets model.pt, checkpoint.pt and the
    logs, ``OUT/validation.md`` the table.

Needs only torch, numpy, pyyaml, tqdm (no SimpleITK): the data travel as the cache file built by
``scripts/build_volume_cache.py``. ``--dry-run`` runs every stage at tiny sizes on the CPU (the
"CUDA" side is the CPU too) to test this script without a GPU.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from drdm_engine.core import fields
from drdm_engine.core.diffusion import DiffusionSchedule, diffuse, forward_fields, random_velocity
from drdm_engine.model.network import RecResACNet
from drdm_engine.model.sampler import RecoverySettings, recover, sample_fields, sample_fields_reference
from drdm_engine.training.config import TrainConfig
from drdm_engine.training.data import load_cache
from drdm_engine.training.losses import recovery_loss
from drdm_engine.training.model_setup import quiet_output
from drdm_engine.training.trainer import Trainer, load_training_data

DEPTHS = (16, 32, 48)


class Session:
    """Budget, devices, sizes and the JSON report of one session."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.monotonic()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry or not torch.cuda.is_available() else "cuda")
        self.cpu = torch.device("cpu")
        self.check_size = 16 if self.dry else 32
        self.sample_size = 16 if self.dry else 128
        self.train_size = 16 if self.dry else args.size
        # the dry run samples through 8 steps (T = 8) instead of 80: the same code, ~10x less CPU
        self.schedule = DiffusionSchedule(timesteps=8 if self.dry else 80, control_size=16 if self.dry else 64,
                                          amplitude=2.0)
        self.depth = 6 if self.dry else 64
        self.folding_depths = (2, 4) if self.dry else DEPTHS
        self.report: dict = {"dry_run": self.dry, "device": self._device_name(), "torch": torch.__version__,
                             "python": platform.python_version(), "budget_s": args.budget_s, "stages": {}}

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stage(self, name: str, function) -> None:
        started = time.monotonic()
        try:
            result = function(self)
            entry = {"ok": True, **result}
        except Exception as exc:  # a failing stage must not stop the session: record it, go on
            entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        entry["seconds"] = round(time.monotonic() - started, 2)
        self.report["stages"][name] = entry
        self.save()
        print(f"[{name}] {'ok' if entry['ok'] else 'FAILED: ' + entry['error']} ({entry['seconds']} s, "
              f"{self.left():.0f} s left)", flush=True)

    def save(self) -> None:
        (self.out / "gpu_session.json").write_text(json.dumps(self.report, indent=2, default=str))


# --- (a) CUDA against CPU --------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference over max abs value of ``b``."""
    return float((a.float().cpu() - b.float().cpu()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def checks(s: Session) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
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
    trainer_step = _trainer_step(s)
    result = {
        "power_max_abs_vox": float((power[s.cpu] - power[s.device].cpu()).abs().max()),
        "warp_max_abs": float((warped[s.cpu] - warped[s.device].cpu()).abs().max()),
        "network_fp32_rel": _rel(p_dev, p_cpu),
        "network_bf16_channels_last_rel": _rel(p_bf16, p_cpu),
        "recovery_10_steps_max_abs_vox": float((rec_cpu - rec_dev.cpu()).abs().max()),
        "train_step_loss_cpu": losses["cpu"], "train_step_loss_device": losses[s.device.type],
        "train_step_conv_out_rel": _rel(weights[s.device.type], weights["cpu"]),
        "trainer_step_bf16": trainer_step,
    }
    result["passed"] = bool(result["power_max_abs_vox"] < 1e-3 and result["warp_max_abs"] < 1e-4
                            and result["network_fp32_rel"] < 1e-3 and result["network_bf16_channels_last_rel"] < 0.1
                            and result["recovery_10_steps_max_abs_vox"] < 0.05
                            and abs(losses["cpu"]["total"] - losses[s.device.type]["total"])
                            < 1e-3 * abs(losses["cpu"]["total"]) + 1e-5
                            and result["train_step_conv_out_rel"] < 1e-3 and trainer_step["finite"])
    return result


def _trainer_config(s: Session, **changes) -> TrainConfig:
    values = dict(data=[s.args.cache], size=s.train_size, control_size=s.schedule.control_size, steps=10 ** 6,
                  batch_size=s.args.batch, out=str(s.out / "scratch"), progress=False, validate_every=0,
                  checkpoint_every=10 ** 6, device=s.device.type, seed=0, amp=True)
    values.update(changes)
    return TrainConfig(**values)


def _trainer_step(s: Session) -> dict:
    trainer = Trainer(_trainer_config(s))
    terms, _ = trainer.train_step()
    values = terms.as_floats()
    return {"amp_dtype": str(trainer.amp_dtype), "memory_format": str(trainer.memory_format),
            "finite": all(math.isfinite(v) for v in values.values()), **values}


# --- (b) timings -----------------------------------------------------------------------------------
def _timed(s: Session, function) -> float:
    s.sync()
    started = time.perf_counter()
    function()
    s.sync()
    return time.perf_counter() - started


def timings(s: Session) -> dict:
    torch.backends.cudnn.benchmark = True
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

    ours()  # warm-up: kernels, cuDNN autotuning
    sample = {"size": s.sample_size, "steps": s.schedule.timesteps, "depth": s.depth,
              "ours_bf16_channels_last_s": [_timed(s, ours) for _ in range(2)], "faithful_fp32_s": _timed(s, faithful)}
    sample["speed-up"] = sample["faithful_fp32_s"] / min(sample["ours_bf16_channels_last_s"])
    data = load_training_data(_trainer_config(s))
    ours_trainer = Trainer(_trainer_config(s), data)
    faithful_trainer = Trainer(_trainer_config(s, amp=False, integrator="sequential", batch_size=1), data)
    for trainer in (ours_trainer, faithful_trainer):
        trainer.train_step()  # warm-up
    times = {"ours": [], "faithful": []}
    for _ in range(1 if s.dry else 5):
        times["ours"].append(_timed(s, ours_trainer.train_step))
        times["faithful"].append(_timed(s, faithful_trainer.train_step))
    rates = {"ours_samples_per_s": s.args.batch * len(times["ours"]) / sum(times["ours"]),
             "faithful_fp32_samples_per_s": len(times["faithful"]) / sum(times["faithful"])}
    training = {"size": s.train_size, "batch_ours": s.args.batch, "batch_faithful": 1, **rates,
                "step_seconds": times, "speed-up": rates["ours_samples_per_s"] / rates["faithful_fp32_samples_per_s"]}
    return {"sample_128": sample, "training_64": training,
            "targets": {"sample_le_1s": min(sample["ours_bf16_channels_last_s"]) <= 1.0,
                        "training_ge_100_samples_per_s": rates["ours_samples_per_s"] >= 100}}


# --- (c) training ----------------------------------------------------------------------------------
def training(s: Session) -> dict:
    init = Path(s.args.init)
    seconds = max(s.left() - s.args.reserve_s, 10.0)
    config = _trainer_config(s, out=str(s.out / "default3d"), time_limit=seconds, checkpoint_every=200,
                             validation_samples=2 if s.dry else 4, fine_tune=str(init) if init.is_file() else "")
    trainer = Trainer(config)
    trainer.run()
    held = trainer.data.held_out
    folding = _sample_folding(s, trainer.model, trainer.schedule, held.volumes[:1] if held is not None else None)
    rows = [r for r in _read_csv(s.out / "default3d" / "validation.csv") if int(r["step"]) == trainer.step]
    _write_table(s.out / "validation.md", trainer.step, config, rows, folding, init.is_file())
    return {"steps": trainer.step, "seconds_budget": round(seconds, 1), "fine_tuned_from": config.fine_tune,
            "validation": rows, "folding": folding}


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
    return out


def _read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


def _write_table(path: Path, steps: int, config: TrainConfig, rows: list[dict], folding: list[dict],
                 fine_tuned: bool) -> None:
    lines = [f"# Default 3D model after this session: {steps} steps "
             f"({'fine-tuned from ' + config.fine_tune if fine_tuned else 'fresh'}), N={config.size}, "
             f"batch {config.batch_size}", "", "| t bucket | MRSE | cosine | |q|/|c| |", "|---|---|---|---|"]
    lines += [f"| {r['bucket']} | {float(r['recovery_error']):.3f} | {float(r['cosine']):.3f} | "
              f"{float(r['ratio']):.2f} |" for r in rows]
    lines += ["", "| T0 | DRDM folding % | diffusion-only folding % | DRDM mean disp. (vox) | diffusion mean disp. |",
              "|---|---|---|---|---|"]
    lines += [f"| {f['depth']} | {f['drdm_folding_pct']:.3f} | {f['diffusion_folding_pct']:.3f} | "
              f"{f['drdm_mean_disp_vox']:.2f} | {f['diffusion_mean_disp_vox']:.2f} |" for f in folding]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", default="training_data/volumes_64.pt", help="volume cache file")
    parser.add_argument("--init", default="training_data/default3d_latest.pt",
                        help="fine-tune from this model when it exists (training accumulates across sessions)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for all stages")
    parser.add_argument("--reserve-s", type=float, default=60.0, help="seconds kept for validation and saving")
    parser.add_argument("--size", type=int, default=64, help="training working grid side")
    parser.add_argument("--batch", type=int, default=8, help="training batch (ours)")
    parser.add_argument("--stages", nargs="+", default=["checks", "timings", "training"])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (tests this script)")
    args = parser.parse_args(argv)
    if args.dry_run:
        torch.set_num_threads(1)
    session = Session(args)
    print(f"gpu session on {session.report['device']}, torch {torch.__version__}, budget {args.budget_s:.0f} s",
          flush=True)
    for name in args.stages:
        session.stage(name, {"checks": checks, "timings": timings, "training": training}[name])
    ok = all(stage["ok"] for stage in session.report["stages"].values())
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "traceback"}
                      for k, v in session.report["stages"].items()}, indent=1, default=str)[:6000])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
