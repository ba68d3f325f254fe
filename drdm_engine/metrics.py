"""Per-sample quality figures of a deformation and its effect on the labels."""
from __future__ import annotations

import torch

from . import fields
from .labels import label_values


def displacement_stats(u_mm: torch.Tensor) -> dict[str, float]:
    """Mean and 99th percentile of ``|u|`` in mm over all voxels; ``u_mm`` ``(nd, *shape)``."""
    norm = u_mm.float().norm(dim=0).reshape(-1)
    if norm.numel() > 1 << 22:
        norm = norm[:: norm.numel() // (1 << 22) + 1]
    return {"displacement_mean_mm": float(norm.mean()), "displacement_p99_mm": float(torch.quantile(norm, 0.99))}


def folding(u_voxels: torch.Tensor) -> dict[str, float]:
    """Fraction of voxels with ``det J <= 0`` and the minimum ``det J``; ``u_voxels`` ``(B=1, nd, *shape)``."""
    det = fields.jacobian_determinant(u_voxels)
    return {"folding_fraction": float((det <= 0).float().mean()), "jacobian_min": float(det.min())}


def label_agreement(before: torch.Tensor, after: torch.Tensor, names: dict[int, str]) -> dict[str, dict[str, float]]:
    """Per foreground label: Dice of ``after`` against ``before`` and relative volume change
    ``(V_after - V_before) / V_before``. Keys are segment names (or the label value)."""
    dice, volume = {}, {}
    for value in label_values(before):
        if value == 0:
            continue
        a, b = before == value, after == value
        va, vb = int(a.sum()), int(b.sum())
        key = names.get(value, str(value))
        dice[key] = 2.0 * int((a & b).sum()) / (va + vb)
        volume[key] = (vb - va) / va
    return {"dice": dice, "volume_change": volume}
