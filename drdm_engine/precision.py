"""Reduced-precision choices per device, used only where measured to help (``bench/README.md``)."""
from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matrix maths runs natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 / AMX (oneDNN's bf16 kernels; on other CPUs bf16 is emulated and much slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


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
