"""Reduced-precision choices per device, used only where measured to help (``bench/README.md``)."""
from __future__ import annotations

import functools

import torch

from ..core.defaults import PRECISIONS
from .compat import cuda_bf16_native


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matrix maths runs natively: a CUDA GPU of compute capability 8.0 or later, or an
    x86 CPU with AVX512-BF16 or AMX-BF16 (oneDNN's bf16 kernels). Elsewhere bf16 is emulated and slower
    than fp32 (measured 37x slower on an AVX2 CPU), so the answer is False."""
    if device.type == "cuda":
        return cuda_bf16_native(device)
    return device.type == "cpu" and bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as info:
            line = next((l for l in info if l.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def mixed_precision_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the network on ``device``: bf16 where native, else fp16 on CUDA, else ``None``
    (fp32)."""
    if native_bf16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def recovery_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the recovery network for ``--precision``: ``fp32`` -> ``None``; ``bf16`` ->
    bf16; ``auto`` -> bf16 on a CUDA GPU with native bf16, fp32 on every CPU: with the network's fast
    layers (every convolution through oneDNN, channels-last) fp32 ran 2.0-2.2x faster than bf16
    autocast per 3D 64^3 forward and 1.8-2.0x per 2D 256^2 one on an Intel Xeon with AVX512-BF16
    (``bench/bench_network.py --bf16``), and it is the faithful path. (bf16 had been 3.3x faster than
    PyTorch's own fp32 layers on an AMD EPYC with AVX512-BF16; not re-measured against the fast layers.)"""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and not (device.type == "cuda" and native_bf16(device))):
        return None
    return torch.bfloat16
