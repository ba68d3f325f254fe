"""Per-sample quality figures of a deformation and its effect on the labels."""
from __future__ import annotations

import torch

from . import fields
from .labels import label_values


def displacement_stats(u_mm: torch.Tensor, max_voxels: int = 1 << 22) -> dict[str, float]:
    """Mean and 99th percentile of ``|u|`` in mm; ``u_mm`` ``(*shape, nd)`` (vectors last). Large fields
    are subsampled on a regular stride to at most ``max_voxels`` voxels (no full-size temporaries)."""
    vectors = u_mm.reshape(-1, u_mm.shape[-1])
    vectors = vectors[:: vectors.shape[0] // max_voxels + 1]
    norm = vectors.float().norm(dim=1)
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
