"""Which torch device a run uses: one rule for augmentation, pipelines, training and evaluation."""
from __future__ import annotations

import os

import torch

from .errors import DRDMError

KINDS = ("cpu", "cuda", "mps")


def launched_by_torchrun() -> bool:
    """True inside ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_device(name: str = "auto", kinds: tuple[str, ...] = KINDS) -> torch.device:
    """The device ``name`` names, refused with one line when PyTorch cannot run there.

    ``auto``: CUDA when PyTorch sees a GPU, else the CPU. Under torchrun ``auto`` and ``cuda`` mean this
    process's GPU, ``cuda:LOCAL_RANK`` (checked like any other index). ``kinds``: the device types the caller runs on
    (training: CPU and CUDA only)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in kinds:
        names = ", ".join(k if k != "cuda" else "cuda (or cuda:N)" for k in kinds)
        raise DRDMError(f"--device {name} is not a device DRDM runs on here; use auto, {names}")
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DRDMError(f"--device {name} asked for, but PyTorch sees no CUDA GPU; use --device cpu or install a "
                        f"CUDA build")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DRDMError(f"--device {name}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s); use cuda:0…"
                        f"cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DRDMError(f"--device {name} asked for, but PyTorch sees no Apple MPS device; use --device cpu")
    return device
