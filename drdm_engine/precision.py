"""Reduced-precision choices per device, used only where measured to help (``bench/README.md``)."""
from __future__ import annotations

import functools

import torch


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matrix maths runs natively: a CUDA GPU that supports it, or an x86 CPU with
    AVX512-BF16 or AMX-BF16 (oneDNN's bf16 kernels). Elsewhere bf16 is emulated and slower than fp32
    (measured 37x slower on an AVX2 CPU), so the answer is False."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
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


PRECISIONS = ("auto", "fp32", "bf16")


def recovery_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the recovery network for ``--precision``: ``fp32`` -> ``None``; ``bf16`` ->
    bf16; ``auto`` -> bf16 where native (measured 2.5-3.5x per 3D step on an AVX512-BF16 CPU, 1.4x in
    2D, fields as close to fp32 as fp32's own rounding noise: ``bench/bench_precision.py``), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and not native_bf16(device)):
        return None
    return torch.bfloat16
