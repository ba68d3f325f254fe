"""TF32 and cuDNN autotuning switches for a block of work, restored after it.

The switches live in ``torch.backends`` and hold for the whole process. Training and the timings that
describe it must run under the same ones, and checks that compare CUDA with the CPU need plain fp32, so
each block sets its switches and puts the previous values back when it ends. On the CPU they change
nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class BackendFlags:
    """TF32 in matrix products, TF32 in cuDNN convolutions, cuDNN autotuning (``cudnn.benchmark``)."""

    matmul_tf32: bool
    cudnn_tf32: bool
    cudnn_benchmark: bool

    @classmethod
    def current(cls) -> "BackendFlags":
        """The switches as they are now."""
        return cls(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                   torch.backends.cudnn.benchmark)

    def apply(self) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
        torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark


TRAINING_FLAGS = BackendFlags(matmul_tf32=False, cudnn_tf32=True, cudnn_benchmark=True)
"""What training runs under: PyTorch's default TF32 choices (convolutions outside autocast may use TF32,
matrix products do not) plus cuDNN autotuning, which pays off because every step has the same shapes."""

EXACT_FLAGS = BackendFlags(matmul_tf32=False, cudnn_tf32=False, cudnn_benchmark=False)
"""Plain fp32 everywhere and no autotuning: for comparing CUDA results with the CPU's."""


@contextmanager
def backend_flags(flags: BackendFlags) -> Iterator[None]:
    """Run the block under ``flags``; the previous switches come back when it ends, also on an error."""
    previous = BackendFlags.current()
    flags.apply()
    try:
        yield
    finally:
        previous.apply()
