"""Per-sample quality figures of a deformation and its effect on the labels."""
from __future__ import annotations

import torch

from . import fields
from .labels import label_values


def sample_stride(voxels: int, max_voxels: int = 1 << 22) -> int:
    """Stride of the regular subsample of at most ``max_voxels`` voxels used for displacement statistics."""
    return voxels // max_voxels + 1


def strided_norms(chunk: torch.Tensor, first: int, stride: int) -> torch.Tensor:
    """``|u|`` (mm) of a field chunk ``(rows, ..., nd)`` (vectors last) at the global flat voxel indices
    that are multiples of ``stride``; ``first`` is the chunk's first flat index. Chunks taken in order
    give the same subsample as the whole field."""
    vectors = chunk.reshape(-1, chunk.shape[-1])
    return vectors[(-first) % stride::stride].float().norm(dim=1)


def displacement_stats(norms: torch.Tensor) -> dict[str, float]:
    """Mean and 99th percentile of ``|u|`` in mm from a subsample of norms (:func:`strided_norms`)."""
    return {"displacement_mean_mm": float(norms.mean()), "displacement_p99_mm": float(torch.quantile(norms, 0.99))}


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
