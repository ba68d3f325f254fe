"""Per-sample quality figures of a deformation and its effect on the labels."""
from __future__ import annotations

import torch

from . import fields
from .labels import CHUNK, label_values
from .order import quantile

FOLDING_ROWS = 16  # rows of array axis 0 per slab of the folding figures


def sample_stride(voxels: int, max_voxels: int = 1 << 22) -> int:
    """Stride of the regular subsample of at most ``max_voxels`` voxels used for displacement statistics."""
    return voxels // max_voxels + 1


def strided_norms(chunk: torch.Tensor, first: int, stride: int) -> torch.Tensor:
    """``|u|`` (mm) of a field chunk ``(nd, rows, ...)`` (channels first) at the global flat voxel
    indices that are multiples of ``stride``; ``first`` is the chunk's first flat index. Chunks taken
    in order give the same subsample as the whole field."""
    picked = chunk.reshape(chunk.shape[0], -1)[:, (-first) % stride::stride].float()
    return picked.square().sum(0).sqrt()


def displacement_stats(norms: torch.Tensor) -> dict[str, float]:
    """Mean and 99th percentile of ``|u|`` in mm from a subsample of norms (:func:`strided_norms`). The mean
    is summed in float64: a float32 sum's rounding depends on how many threads share it, and the figures
    must not depend on the number of processes."""
    return {"displacement_mean_mm": float(norms.double().mean()),
            "displacement_p99_mm": float(quantile(norms, 0.99))}


def folding(u_voxels: torch.Tensor, rows: int = FOLDING_ROWS) -> dict[str, float]:
    """Fraction of voxels with ``det J <= 0`` and the minimum ``det J``; ``u_voxels`` ``(B=1, nd, *shape)``.

    Computed over slabs of ``rows`` rows of array axis 0, each with the row either side that its
    central differences read: the determinants of the whole field bit for bit, with slab-sized
    temporaries (cache-sized, instead of a dozen full-size ones)."""
    length = u_voxels.shape[2]
    folded, lowest = 0, float("inf")
    for start in range(0, length, rows):
        stop = min(length, start + rows)
        lo, hi = max(0, start - 1), min(length, stop + 1)
        det = fields.jacobian_determinant(u_voxels[:, :, lo:hi])[:, start - lo:stop - lo]
        folded += int((det <= 0).sum())
        lowest = min(lowest, float(det.min()))
    return {"folding_fraction": folded / u_voxels[0, 0].numel(), "jacobian_min": lowest}


def label_agreement(before: torch.Tensor, after: torch.Tensor, names: dict[int, str],
                    values: list[int] | None = None) -> dict[str, dict[str, float]]:
    """Per foreground label: Dice of ``after`` against ``before`` and relative volume change
    ``(V_after - V_before) / V_before``. Keys are segment names (or the label value). Counted chunk by
    chunk: no full-size temporaries. ``values``: the label values of ``before`` when already known."""
    values = [v for v in (label_values(before) if values is None else values) if v != 0]
    m = len(values)
    table = torch.tensor(values, dtype=torch.long)
    joint = torch.zeros((m + 1) ** 2, dtype=torch.long)  # (before index, after index); index m: any other value
    flat_before, flat_after = before.reshape(-1), after.reshape(-1)
    for start in range(0, flat_before.numel(), CHUNK):
        a = _value_index(flat_before[start:start + CHUNK], table)
        b = _value_index(flat_after[start:start + CHUNK], table)
        joint += torch.bincount(a * (m + 1) + b, minlength=(m + 1) ** 2)
    joint = joint.view(m + 1, m + 1)
    counts = {v: [int(joint[i].sum()), int(joint[:, i].sum()), int(joint[i, i])] for i, v in enumerate(values)}
    dice, volume = {}, {}
    for value, (va, vb, both) in counts.items():
        key = names.get(value, str(value))
        dice[key] = 2.0 * both / (va + vb)
        volume[key] = (vb - va) / va
    return {"dice": dice, "volume_change": volume}


def _value_index(chunk: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Position of each label of ``chunk`` in the sorted ``table`` of values, ``len(table)`` for a
    value not in it (int64, same length as ``chunk``)."""
    m = len(table)
    if chunk.dtype == torch.uint8:
        lookup = torch.full((256,), m, dtype=torch.long)
        lookup[table] = torch.arange(m)
        return lookup[chunk.long()]
    found = torch.searchsorted(table, chunk.long()).clamp_max(max(m - 1, 0))
    return torch.where(table[found] == chunk.long(), found, m) if m else torch.zeros_like(found)
