"""Per-sample quality figures of a deformation and its effect on the labels."""
from __future__ import annotations

import torch

from . import fields
from .labels import CHUNK, label_values


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
    ``(V_after - V_before) / V_before``. Keys are segment names (or the label value). Counted chunk by
    chunk: no full-size temporaries."""
    values = [v for v in label_values(before) if v != 0]
    counts = {v: [0, 0, 0] for v in values}
    flat_before, flat_after = before.reshape(-1), after.reshape(-1)
    for start in range(0, flat_before.numel(), CHUNK):
        a_chunk, b_chunk = flat_before[start:start + CHUNK], flat_after[start:start + CHUNK]
        for value in values:
            a, b = a_chunk == value, b_chunk == value
            counts[value][0] += int(a.sum())
            counts[value][1] += int(b.sum())
            counts[value][2] += int((a & b).sum())
    dice, volume = {}, {}
    for value, (va, vb, both) in counts.items():
        key = names.get(value, str(value))
        dice[key] = 2.0 * both / (va + vb)
        volume[key] = (vb - va) / va
    return {"dice": dice, "volume_change": volume}
