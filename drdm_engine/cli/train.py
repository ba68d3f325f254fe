"""Command line of training and evaluation: ``drdm train`` / ``drdm evaluate`` sub-commands and
``python -m drdm_engine.train`` (also what ``torchrun -m drdm_engine.train`` runs).

``register(subparsers)`` adds both sub-commands to a parent ``drdm`` parser; each sets ``func``
(called with the parsed arguments, returns the exit code).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from ..core.device import resolve_device
from ..core.errors import DRDMError
from ..core.limits import require_int, require_seed, require_side
from ..jobs.distributed import launched_by_torchrun, stop
from ..jobs.resources import check_evaluation_memory, check_training_memory
from ..jobs.runfolder import Terminated, stop_signals_interrupt
from ..model.checkpoint import load_checkpoint
from ..training.config import TrainConfig, add_config_arguments, from_arguments
from ..training.data import data_dimension, find_volumes, load_volumes, volumes_dimension
from ..training.evaluation import buckets_for, recovery_error
from ..training.output_folder import check_run_folder, run_lock
from ..training.trainer import RUN_FILES, TRAINING_DEVICES, Trainer

INTERRUPTED = 130
EVALUATE_MISMATCH = "the volumes are {ndims}D; choose a {ndims}D model"


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``drdm train``: every config key is a flag; ``--distributed`` starts torchrun for you."""
    parser = subparsers.add_parser("train", help="train a DRDM model on a folder of unlabelled volumes",
                                   description="Train a DRDM recovery network (settings: YAML --config, "
                                               "every key also a flag).")
    add_train_arguments(parser)
    parser.set_defaults(func=run_train)
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--distributed", action="store_true",
                        help="run with DistributedDataParallel through torchrun (one process per GPU, "
                             "or --nproc CPU processes with gloo)")
    parser.add_argument("--nproc", type=int, default=0,
                        help="processes for --distributed (default: number of GPUs, else 2)")


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``drdm evaluate --model M DATA... [--json]``: recovery error per t bucket on fixed deformations."""
    parser = subparsers.add_parser("evaluate", help="recovery error of a model per t bucket",
                                   description="Score a DRDM model on volumes with fixed random deformations "
                                               "(same seed: same deformations for every model).")
    parser.add_argument("data", nargs="+", help="volumes, folders or list files")
    parser.add_argument("--model", required=True, help="DRDM checkpoint (ours; convert published ones first)")
    parser.add_argument("--size", type=int, default=0, help="working grid side (default: the model's)")
    parser.add_argument("--samples", type=int, default=4, help="deformations per volume and bucket (default 4)")
    parser.add_argument("--buckets", type=int, default=4, help="number of t buckets (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="deformation seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:K]")
    parser.add_argument("--force-large", action="store_true",
                        help="evaluate on the CPU even when the estimated memory exceeds what is available")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.set_defaults(func=run_evaluate)
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate`` to the ``drdm`` command."""
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)


def _torchrun_command(argv: list[str], nproc: int) -> list[str]:
    forwarded = [a for a in argv if a != "--distributed"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "drdm_engine.train", *forwarded]


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def check_training_fits(config: TrainConfig) -> None:
    """The CPU memory guard of a training process (``LOCAL_WORLD_SIZE`` of them on this machine), from the
    data's headers before any volume is loaded; skipped on a GPU and with ``force_large``."""
    if resolve_device(config.device, TRAINING_DEVICES).type == "cpu" and not config.force_large:
        check_training_memory(data_dimension(config.data), config.size, config.batch_size,
                              int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def run_train(args: argparse.Namespace) -> int:
    """Train (in this process, or relaunched under torchrun for ``--distributed``). Ctrl-C, SIGTERM and
    SIGHUP (schedulers, ``timeout``) save a resumable checkpoint; exit code 128 + the signal."""
    config = from_arguments(args)
    require_int("--nproc", args.nproc, 0)
    check_run_folder(Path(config.out), RUN_FILES, config.resume, config.overwrite)
    if args.distributed and not launched_by_torchrun():
        nproc = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
        argv = _strip_nproc(getattr(args, "argv", sys.argv[2:]))
        return subprocess.call(_torchrun_command(argv, nproc))
    check_training_fits(config)
    main_process = not launched_by_torchrun() or os.environ["RANK"] == "0"
    try:
        with stop_signals_interrupt(), run_lock(Path(config.out)) if main_process else nullcontext():
            Trainer(config).run()
    except Terminated as stopped:
        return 128 + stopped.signum
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        stop()
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Print the recovery error per t bucket of ``--model`` on the given volumes."""
    if args.samples < 1 or args.buckets < 1:
        raise DRDMError("--samples and --buckets must be at least 1")
    if args.size:
        require_side("--size", args.size)
    require_seed("--seed", args.seed)
    paths = find_volumes(args.data)
    ndims = volumes_dimension(paths)
    device = resolve_device(args.device, TRAINING_DEVICES)
    model = load_checkpoint(args.model, ndims=ndims, device=device, mismatch=EVALUATE_MISMATCH)
    size = args.size or model.meta.size
    if device.type == "cpu" and not args.force_large:
        check_evaluation_memory(ndims, size, len(paths))
    volumes = load_volumes(paths, size)
    buckets = buckets_for(model.meta.timesteps, args.buckets)
    report = recovery_error(model.net, volumes.volumes, model.meta.schedule, buckets, args.samples, args.seed)
    if args.json:
        print(json.dumps({"model": str(args.model), "volumes": [str(p) for p in paths], "size": size,
                          "seed": args.seed, "samples": args.samples, "recovery_error": report}, indent=2))
    else:
        print(f"model {args.model} on {len(paths)} volume(s), N={size}, seed {args.seed}, "
              f"{args.samples} deformation(s) per volume and bucket")
        print("recovery error (MRSE; 0 = perfect, 1 = no recovery):")
        for label, error in report.items():
            print(f"  {label}: {error:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m drdm_engine.train`` (the ``train`` sub-command on its own)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m drdm_engine.train",
                                     description="Train a DRDM recovery network.")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return run_train(args)
    except DRDMError as exc:
        print(f"drdm: error: {exc}", file=sys.stderr)
        return 2
