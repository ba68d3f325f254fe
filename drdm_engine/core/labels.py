"""Label-safe warping: every output voxel takes a label value of the input, and every label of the
input survives.

Every output voxel takes the label whose indicator, warped linearly, is largest there
(one-hot-linear-then-argmax, ties to the lower value): smoother boundaries than nearest neighbour,
never a new value. It is computed without the indicators (:func:`linear_vote`): the labels at the
``2^nd`` grid corners around each position vote with their linear weights. A label that
the argmax loses entirely (a structure squeezed below one voxel, or outvoted by touching neighbours)
is put back at the voxel where its warped indicator is highest among voxels whose own label keeps
other voxels; a label no output voxel samples at all (moved out of view) is put where the output
samples closest to it. Each restoration is listed in :attr:`LabelWarper.restored`.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from .grid import sample_rows, source_rows

CHUNK = 1 << 24
INDICATOR_BUDGET = 1 << 24  # indicator/score elements held at once (channel chunks): 64 MiB of float32
CANDIDATES = 32  # best voxels considered per lost label
VOTE_CHUNK = 1 << 20  # output voxels voted at once (bounds the corner tables: 2^nd values each)

Positions = Callable[[], Iterable[tuple[int, torch.Tensor]]]


def label_values(labels: torch.Tensor) -> list[int]:
    """Sorted label values present in ``labels``, chunk by chunk (``torch.unique`` on a 512x512x300
    map costs over 1 GB of scratch memory; this costs one chunk)."""
    flat = labels.reshape(-1).numpy()
    found: set[int] = set()
    for start in range(0, flat.size, CHUNK):
        found.update(np.unique(flat[start:start + CHUNK]).tolist())
    return sorted(found)


def compact_labels(array: np.ndarray) -> torch.Tensor:
    """Label array as a uint8, int32 or (values beyond int32) int64 tensor: full-size label maps stay
    small and every integer value is kept exactly. Refuses non-integer values (``ValueError``)."""
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ValueError("label arrays must hold integer values")
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    low, high = int(array.min()), int(array.max())
    if 0 <= low and high <= 255:
        return torch.from_numpy(array.astype(np.uint8))
    info = np.iinfo(np.int32)
    return torch.from_numpy(array.astype(np.int32 if info.min <= low and high <= info.max else np.int64))


def linear_vote(source: torch.Tensor, pos: torch.Tensor, lo: int = 0) -> torch.Tensor:
    """Label-safe linear warp of the label rows ``source`` ``(rows, ...)`` (integer; rows ``lo…`` of the
    map) at input-voxel positions ``pos`` ``(1, nd, *out)``, border padding as :func:`sample_rows`.

    Each output voxel takes, among the labels at the ``2^nd`` corners of the grid cell around its
    position, the one with the largest summed (multi)linear weight, ties to the lower value: the
    argmax of every label's indicator warped linearly, without warping any indicator. The weights and
    their sums follow ``grid_sample``'s own arithmetic in 3D, so the 3D result equals the argmax of a
    trilinear ``grid_sample`` of the indicators bit for bit. Where all corners agree (most voxels),
    their label is taken at once. Returns ``(*out)`` in ``source``'s dtype.
    """
    coords = pos[0].reshape(pos.shape[1], -1)
    result = torch.empty(coords.shape[1], dtype=source.dtype)
    padded = source
    for a in range(source.dim()):  # one more copy of the last row of each axis: the cell above it always exists
        padded = torch.cat([padded, padded.narrow(a, padded.shape[a] - 1, 1)], a)
    for begin in range(0, coords.shape[1], VOTE_CHUNK):
        chunk = coords[:, begin:begin + VOTE_CHUNK]
        result[begin:begin + chunk.shape[1]] = _vote(padded, chunk, lo)
    return result.view(pos.shape[2:])


def _vote(padded: torch.Tensor, coords: torch.Tensor, lo: int) -> torch.Tensor:
    """:func:`linear_vote` at positions ``coords`` ``(nd, m)`` (axis 0 offset by ``lo``) of the label rows
    ``padded`` (each axis one longer, its last row repeated): the winning label per position, ``(m,)``."""
    nd = padded.dim()
    strides = padded.stride()
    base = torch.zeros(coords.shape[1], dtype=torch.int64)
    near, far = [], []
    for a in range(nd):
        n = padded.shape[a] - 1
        p = coords[a] - lo if a == 0 else coords[a]
        half = max(n - 1, 1) / 2
        x = (((p / half - 1) + 1) / 2 * (n - 1)).clamp_(0, n - 1)  # grid_sample's own source index
        low = x.floor()
        near.append((low + 1) - x)  # weight of the lower corner; at the last row 0 for the copy above it
        far.append(x - low)
        base += low.long() * strides[a]
    offsets = [0]
    for a in range(nd - 1, -1, -1):  # the last array axis (grid_sample's x) varies fastest: its corner order
        offsets = [o + c * strides[a] for c in (0, 1) for o in offsets]
    flat = padded.reshape(-1)
    corners = torch.stack([flat.take(base + o) for o in offsets])
    out = corners[0].clone()
    mixed = (corners != corners[0]).any(0).nonzero().flatten()
    if mixed.numel():
        labels = corners[:, mixed]
        weights = [None]
        for a in range(nd - 1, -1, -1):  # products in grid_sample's order: x weight first
            weights = [(w if v is None else v * w) for w in (near[a][mixed], far[a][mixed]) for v in weights]
        weights = torch.stack(weights)
        scores = torch.zeros_like(weights)
        for j in range(len(offsets)):  # summed in corner order from 0, as grid_sample sums
            scores += weights[j] * (labels == labels[j])
        best = scores == scores.max(0).values
        fill = torch.iinfo(labels.dtype).max
        out[mixed] = torch.where(best, labels, torch.full_like(labels, fill)).amin(0)
    return out


def _merge_top(scores: torch.Tensor, indices: torch.Tensor, new_scores: torch.Tensor,
               new_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``scores.shape[1]`` largest of two ``(C, k)`` candidate lists per row."""
    all_scores, all_indices = torch.cat([scores, new_scores], 1), torch.cat([indices, new_indices], 1)
    top, pick = all_scores.topk(scores.shape[1], dim=1)
    return top, all_indices.gather(1, pick)


class LabelWarper:
    """Accumulates a label-safe warp of ``labels`` ``(*shape)`` (integer tensor) slab by slab.

    ``values``: the sorted label values of ``labels`` when already known (:func:`label_values`).
    Each slab is voted by :func:`linear_vote`. ``budget``: float elements of indicators and scores
    held at once when a lost label is scored for its restoration (the indicators are warped in
    channel chunks of at most that size)."""

    def __init__(self, labels: torch.Tensor, budget: int = INDICATOR_BUDGET, values: list[int] | None = None):
        self.labels = labels
        self.values = torch.tensor(label_values(labels) if values is None else values, dtype=torch.int64)
        self.out = torch.zeros_like(labels)
        self.budget = budget
        self.row_voxels = int(np.prod(labels.shape[1:]))
        self.restored: list[dict] = []

    def _channels(self, labels: torch.Tensor) -> torch.Tensor:
        """Index of each voxel's value in :attr:`values` (int64, same shape)."""
        return torch.searchsorted(self.values, labels.to(torch.int64).reshape(-1)).view(labels.shape)

    def _scores(self, start: int, pos: torch.Tensor, wanted: torch.Tensor):
        """Warped indicators of output rows from ``start`` at positions ``pos``, by channel chunks:
        yields ``(channels, scores (len(channels), *pos.shape[2:]))`` for the labels of ``wanted``
        (channel indices) present in the source rows."""
        lo, hi = source_rows(pos, self.labels.shape[0])
        channel = self._channels(self.labels[lo:hi])
        present = torch.nonzero(torch.bincount(channel.reshape(-1), minlength=len(self.values))).flatten()
        present = present[torch.isin(present, wanted)]
        if present.numel() == 0:
            return
        per_chunk = max(1, self.budget // max(channel.numel(), pos[0, 0].numel()))
        for chunk in present.split(per_chunk):
            indicators = (channel[None] == chunk.view((-1,) + (1,) * channel.dim())).float()[None]
            yield chunk, sample_rows(indicators, pos, "bilinear", lo)[0]

    def add_slab(self, start: int, stop: int, pos: torch.Tensor) -> None:
        """Fill output rows ``start:stop`` from input-voxel positions ``pos`` ``(1, nd, stop-start, ...)``."""
        lo, hi = source_rows(pos, self.labels.shape[0])
        self.out[start:stop] = linear_vote(self.labels[lo:hi], pos, lo)

    def _highest_scores(self, lost: list[int], positions: Positions) -> tuple[torch.Tensor, torch.Tensor]:
        """Per lost label, its :data:`CANDIDATES` output voxels of highest warped indicator
        (``(len(lost), CANDIDATES)`` scores, -1 where fewer, and flat indices)."""
        wanted = torch.tensor(lost)
        scores = torch.full((len(lost), CANDIDATES), -1.0)
        indices = torch.zeros((len(lost), CANDIDATES), dtype=torch.int64)
        for start, pos in positions():
            for chunk, score in self._scores(start, pos, wanted):
                flat = score.reshape(len(chunk), -1)
                new_scores, new_indices = flat.topk(min(CANDIDATES, flat.shape[1]), dim=1)
                rows = torch.searchsorted(wanted, chunk)
                scores[rows], indices[rows] = _merge_top(scores[rows], indices[rows], new_scores,
                                                         new_indices + start * self.row_voxels)
        return scores, indices

    def _counts(self) -> torch.Tensor:
        """Voxels per label value in the output, chunk by chunk."""
        counts = torch.zeros(len(self.values), dtype=torch.int64)
        flat = self.out.reshape(-1)
        for start in range(0, flat.numel(), CHUNK):
            counts += torch.bincount(self._channels(flat[start:start + CHUNK]), minlength=len(self.values))
        return counts

    def _nearest_samples(self, lost: list[int], positions: Positions) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates for labels no output voxel samples: the output voxels whose sampling positions lie
        nearest the label's input voxel closest to its centroid (scores are minus squared distances)."""
        targets = []
        for c in lost:
            where = torch.nonzero(self.labels == self.values[c]).double()
            targets.append(where[((where - where.mean(0)) ** 2).sum(1).argmin()])
        targets = torch.stack(targets)
        scores = torch.full((len(lost), CANDIDATES), -float("inf"), dtype=torch.float64)
        indices = torch.zeros((len(lost), CANDIDATES), dtype=torch.int64)
        for start, pos in positions():
            flat = pos[0].reshape(pos.shape[1], -1).double()
            distance = ((flat[None] - targets[:, :, None]) ** 2).sum(1)
            k = min(CANDIDATES, distance.shape[1])
            new_scores, new_indices = (-distance).topk(k, dim=1)
            scores, indices = _merge_top(scores, indices, new_scores, new_indices + start * self.row_voxels)
        return scores, indices

    def result(self, positions: Positions) -> torch.Tensor:
        """The warped label map, every input label present. ``positions()`` re-yields ``(start, pos)``
        per slab (as given to :meth:`add_slab`); it is called only when the argmax lost a label."""
        counts = self._counts()
        lost = [int(c) for c in torch.nonzero(counts == 0).flatten()]
        if not lost:
            return self.out
        scores, indices = self._highest_scores(lost, positions)
        unseen = [c for i, c in enumerate(lost) if float(scores[i, 0]) <= 0]
        candidates = {c: (scores[i], indices[i], "warped_probability") for i, c in enumerate(lost) if c not in unseen}
        if unseen:
            scores, indices = self._nearest_samples(unseen, positions)
            candidates.update({c: (scores[i], indices[i], "nearest_sample") for i, c in enumerate(unseen)})
        flat = self.out.view(-1)
        taken: set[int] = set()
        for c in sorted(candidates, key=lambda c: -float(candidates[c][0][0])):
            scores, indices, how = candidates[c]
            floor = 0.0 if how == "warped_probability" else -float("inf")
            choice = next(((float(s), int(i)) for s, i in zip(scores, indices)
                           if s > floor and int(i) not in taken and counts[self._owner(int(i))] > 1), None)
            if choice is None:
                choice = (0.0, self._nearest_free(int(indices[0]), counts, taken))
                how += ", moved to the nearest voxel whose label keeps others"
            score, index = choice
            counts[self._owner(index)] -= 1
            counts[c] += 1
            flat[index] = self.values[c].to(flat.dtype)
            taken.add(index)
            voxel = np.unravel_index(index, self.labels.shape)
            self.restored.append({"value": int(self.values[c]), "voxel_ijk": [int(v) for v in reversed(voxel)],
                                  "placed_by": how, "score": round(score, 6)})
        return self.out

    def _owner(self, index: int) -> int:
        """Channel of the output label at flat ``index``."""
        return int(self._channels(self.out.view(-1)[index:index + 1])[0])

    def _nearest_free(self, index: int, counts: torch.Tensor, taken: set[int]) -> int:
        """The output voxel nearest flat ``index`` whose label has other voxels and that no restored label
        took (searched in growing cubes)."""
        shape = self.labels.shape
        centre = np.array(np.unravel_index(index, shape))
        for radius in range(1, max(shape) + 1):
            lo, hi = np.maximum(centre - radius, 0), np.minimum(centre + radius + 1, shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            free = counts[self._channels(self.out[box])] > 1
            grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"))
            flat_index = np.ravel_multi_index(tuple(grid), shape)
            free &= torch.from_numpy(~np.isin(flat_index, list(taken)))
            if bool(free.any()):
                distance = ((grid - centre.reshape(-1, *([1] * len(shape)))) ** 2).sum(0)
                distance = np.where(free.numpy(), distance, np.iinfo(np.int64).max)
                return int(flat_index.reshape(-1)[int(np.argmin(distance))])
        raise ValueError("no voxel left to restore a label: the image has fewer voxels than labels")
