"""Label-safe warping: every output voxel takes a label value of the input, and every label of the
input survives.

Each label's indicator is warped linearly and the output takes the label of the largest indicator
(one-hot-linear-then-argmax): smoother boundaries than nearest neighbour, never a new value.
A label that the argmax would lose entirely (a structure squeezed below one voxel) is put back at
the voxel where its warped indicator is largest.
"""
from __future__ import annotations

import numpy as np
import torch

from .geometry import sample_rows, source_rows


CHUNK = 1 << 24


def label_values(labels: torch.Tensor) -> list[int]:
    """Sorted label values present in ``labels``, chunk by chunk (``torch.unique`` on a 512x512x300
    map costs over 1 GB of scratch memory; this costs one chunk)."""
    flat = labels.reshape(-1).numpy()
    found: set[int] = set()
    for start in range(0, flat.size, CHUNK):
        found.update(np.unique(flat[start:start + CHUNK]).tolist())
    return sorted(found)


class LabelWarper:
    """Accumulates a label-safe warp of ``labels`` ``(*shape)`` slab by slab."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels
        self.values = label_values(labels)
        self.out = torch.zeros_like(labels)
        self.peak = {v: (-1.0, 0) for v in self.values}

    def add_slab(self, start: int, stop: int, pos: torch.Tensor) -> None:
        """Fill output rows ``start:stop`` from input-voxel positions ``pos`` ``(1, nd, stop-start, ...)``."""
        lo, hi = source_rows(pos, self.labels.shape[0])
        crop = self.labels[lo:hi]
        best_score = None
        best = torch.zeros(pos.shape[2:], dtype=self.labels.dtype)
        offset = start * int(torch.tensor(self.labels.shape[1:]).prod())
        for value in self.values:
            indicator = (crop == value).float()[None, None]
            if not bool(indicator.any()):
                continue
            score = sample_rows(indicator, pos, "bilinear", lo)[0, 0]
            take = score > best_score if best_score is not None else torch.ones_like(score, dtype=torch.bool)
            best[take] = value
            best_score = score if best_score is None else torch.where(take, score, best_score)
            top = float(score.max())
            if top > self.peak[value][0]:
                self.peak[value] = (top, offset + int(torch.argmax(score)))
        self.out[start:stop] = best

    def result(self) -> torch.Tensor:
        """The warped label map; labels lost by the argmax are restored at their strongest voxel."""
        present = set(label_values(self.out))
        for value, (_, index) in self.peak.items():
            if value not in present:
                self.out.view(-1)[index] = value
        return self.out
