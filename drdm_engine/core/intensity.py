"""Intensity normalisation of the network input."""
from __future__ import annotations

import torch

from .order import quantile

LOW, HIGH = 0.5, 99.5


def normalise_(image: torch.Tensor, low: float = LOW, high: float = HIGH) -> torch.Tensor:
    """Map a float ``image`` to [0, 1] **in place** by robust percentiles (``low``, ``high`` in %), clamped;
    works for CT (Hounsfield units) and MR (arbitrary units) alike. Percentiles are estimated on at most
    2^20 voxels. In place, so that a full-resolution volume needs no second full-size copy."""
    flat = image.reshape(-1)
    if flat.numel() > 1 << 20:
        flat = flat[:: flat.numel() // (1 << 20) + 1]
    lo, hi = quantile(flat, low / 100), quantile(flat, high / 100)
    if hi <= lo:
        lo, hi = flat.min(), flat.max()
    return image.sub_(lo).div_((hi - lo).clamp_min(1e-12)).clamp_(0, 1)
