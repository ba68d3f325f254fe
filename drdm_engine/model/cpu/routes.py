"""Where each call of the fast layers goes: oneDNN directly, or PyTorch's own layers and steps.

PyTorch's own are taken inside :func:`reference_layers`, under ``torch.compile`` tracing, and wherever
:mod:`.probe` found the oneDNN operators of a call missing or wrong on the installed torch.
"""
from __future__ import annotations

import contextlib
import contextvars
import platform
from collections.abc import Iterator

import torch

from ..compat import autocast_enabled, is_compiling
from . import probe

_FAST_LAYERS = contextvars.ContextVar("drdm_fast_layers", default=True)

X86 = platform.machine().lower() in ("x86_64", "amd64")
"""oneDNN's inference kernels (fused post-ops, prepacked weights) are used on x86 only: its ARM builds go
through the Arm Compute Library instead."""


@contextlib.contextmanager
def reference_layers() -> Iterator[None]:
    """Inside this block the fast layers run PyTorch's own layers and the published steps (and
    PyTorch's own choice of convolution kernel); the reference path of the benches and tests."""
    token = _FAST_LAYERS.set(False)
    try:
        yield
    finally:
        _FAST_LAYERS.reset(token)


def fast() -> bool:
    """Whether the fast layers run: outside :func:`reference_layers` and outside ``torch.compile``
    tracing (inductor picks its own kernels; checked first, so that tracing never reads the context
    variable, which it cannot)."""
    return not is_compiling() and _FAST_LAYERS.get()


def conv_route(x: torch.Tensor) -> str:
    """Which kernel family a convolution of ``x`` takes: ``"onednn"`` (called directly) or ``"torch"``
    (PyTorch's own dispatch).

    PyTorch sends a batch-1 fp32 CPU convolution with a kernel of at most 3 to oneDNN only when
    ``N * C * D * H > 20480`` (``use_mkldnn`` in ATen's ``Convolution.cpp``); the 20- and 40-channel
    convolutions at 32^3 and below fall to ``slow_conv3d`` / ``slow_conv_dilated3d`` (2.5-9x slower,
    ``bench/bench_network.py``). The fast layers call oneDNN for every fp32 CPU convolution. Under CPU
    autocast PyTorch already sends bf16 convolutions to oneDNN, under ``torch.compile`` inductor picks
    the kernels (the direct oneDNN call has no meta kernel to trace), and elsewhere (CUDA) PyTorch picks
    well."""
    if (fast() and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not autocast_enabled("cpu") and probe.works(probe.CONVOLUTION, x.dim() - 2)):
        return "onednn"
    return "torch"


def inference_kernels(x: torch.Tensor, kind: str = probe.INFERENCE_CONVOLUTION) -> bool:
    """Whether a oneDNN call of ``kind`` on ``x`` may take oneDNN's inference kernels with fused post-ops
    and prepacked weights (``torch.ops.mkldnn._convolution_pointwise``, as inductor's CPU freezing
    uses): no gradient is recorded (they have no backward), the CPU is :data:`X86` and the installed
    torch passed :mod:`.probe` for them."""
    return (not torch.is_grad_enabled() and X86 and conv_route(x) == "onednn"
            and probe.works(kind, x.dim() - 2))


def in_place() -> bool:
    """Whether the fast layers may write sums into fresh layer outputs: no gradient is recorded."""
    return fast() and not torch.is_grad_enabled()
