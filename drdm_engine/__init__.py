"""DRDM engine: deformation-recovery diffusion for instance-specific augmentation (no Slicer, no Qt)."""
from __future__ import annotations

from .core.version import VERSION as __version__

__all__ = ["RecResACNet", "__version__"]


def __getattr__(name: str):
    """``RecResACNet`` on first use: importing the package (its CLI, its errors) does not import torch."""
    if name == "RecResACNet":
        from .model.network import RecResACNet

        return RecResACNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
