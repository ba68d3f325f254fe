"""The one slab loop: a working-grid field mapped onto the input grid slab by slab, each slab used at once
for everything that needs it — warping image channels (linear), label maps (label-safe), the quality
figures, the preview and the written field (LPS mm) — so that the field is mapped once per sample and
never held at full size.

Slabs run along array axis 0 (numpy/SimpleITK order); each holds at most :data:`SLAB_VOXELS` voxels.
Fields on the input grid are in input voxels along each array axis, pull convention
``out(x) = in(x + u(x))``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from ..core.grid import (Geometry, WorkingGrid, field_to_input_voxels, sample_rows, slab_positions, source_rows,
                         voxels_to_physical)
from ..core.labels import LabelWarper
from ..core.metrics import sample_stride, strided_norms

SLAB_VOXELS = 1 << 22
POSITION_CACHE_BYTES = 1 << 28  # sampling positions kept for a label restoration; beyond this, recomputed
PREVIEW_SIDE = 1024  # largest preview panel side (pixels); bigger slices are shown subsampled

FieldSink = Callable[[np.ndarray], None]


@dataclass
class InputField:
    """One sample's displacement field on the input grid, computed slab by slab from its working-grid field.

    ``working``: ``(1, nd, N^nd)`` in working voxels; ``rows``: slab height along array axis 0;
    ``output``: the grid the field is written on when it is not ``grid.input`` (a one-slice 3D input
    deformed in-plane: the 2D field gets a zero z component and the 3D geometry)."""

    working: torch.Tensor
    grid: WorkingGrid
    output: Geometry | None = None

    @property
    def geometry(self) -> Geometry:
        """The grid of the written field."""
        return self.output or self.grid.input

    @property
    def rows(self) -> int:
        """Rows of array axis 0 per slab."""
        return max(1, SLAB_VOXELS // max(1, math.prod(self.grid.input.shape[1:])))

    def voxels(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` in input voxels along each array axis, ``(1, nd, stop - start, ...)``."""
        return field_to_input_voxels(self.working, self.grid, start, stop)

    def physical(self, u: torch.Tensor) -> torch.Tensor:
        """Input-voxel rows ``(1, nd, rows, ...)`` -> LPS mm on the input grid ``(nd, rows, ...)``."""
        return voxels_to_physical(u, self.grid.input)[0]

    def written(self, u: torch.Tensor, physical: torch.Tensor | None = None) -> np.ndarray:
        """The written field's block for input-voxel rows ``u``: LPS mm vectors last, ``(rows, ..., nd)``
        (a one-slice 3D output: rows of its slice, ``(rows, cols, 3)``). ``physical``: :meth:`physical`
        of ``u`` when already computed."""
        if self.output is not None:
            lifted = torch.zeros((1, 3, 1, *u.shape[2:]), dtype=u.dtype)
            lifted[:, 1:, 0] = u
            return voxels_to_physical(lifted, self.output)[0, :, 0].movedim(0, -1).numpy()
        return (self.physical(u) if physical is None else physical).movedim(0, -1).numpy()

    def slabs(self) -> Iterator["Slab"]:
        """Every slab of the input grid with its field and sampling positions."""
        for start, stop, u, pos in slab_positions(self.grid.input.shape, self.voxels, self.rows):
            yield Slab(start, stop, u, pos)

    def lps_mm(self) -> Iterator[np.ndarray]:
        """The written field as consecutive blocks (see :meth:`written`), without warping anything."""
        with torch.inference_mode():
            for slab in self.slabs():
                yield self.written(slab.u)


class Slab(NamedTuple):
    """Rows ``start:stop`` of array axis 0: the field ``u`` ``(1, nd, rows, ...)`` (input voxels) and the
    positions ``pos = x + u(x)`` to pull from."""

    start: int
    stop: int
    u: torch.Tensor
    pos: torch.Tensor


def into_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in ``dtype``: floats rounded and clipped into an integer type's range (in place:
    ``values`` is scratch)."""
    if np.issubdtype(dtype, np.integer) and values.dtype.kind == "f":
        info = np.iinfo(dtype)
        np.rint(values, out=values)
        np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype, copy=False)


def warp_rows(source: np.ndarray, out: np.ndarray, start: int, stop: int, pos: torch.Tensor) -> None:
    """Fill rows ``start:stop`` of ``out`` with ``source`` (same array shape, any pixel types) sampled
    linearly at input-voxel positions ``pos`` ``(1, nd, stop - start, ...)``: only the source rows the
    positions reach are converted to float, and the result is stored in ``out``'s dtype at once."""
    lo, hi = source_rows(pos, source.shape[0])
    band = torch.from_numpy(source[lo:hi].astype(np.float32))[None, None]
    out[start:stop] = into_dtype(sample_rows(band, pos, "bilinear", lo)[0, 0].numpy(), out.dtype)


@dataclass(frozen=True)
class PreviewPlan:
    """Which in-plane field rows the preview needs: every ``step``-th pixel of the central slice
    ``centre`` of array axis 0 (3D) or of the whole image (2D, ``centre=None``)."""

    step: int
    centre: int | None

    @classmethod
    def of(cls, shape: tuple[int, ...]) -> "PreviewPlan":
        return cls(max(1, math.ceil(max(shape[-2:]) / PREVIEW_SIDE)), shape[0] // 2 if len(shape) == 3 else None)

    def rows(self, slab: Slab) -> torch.Tensor | None:
        """The slab's part of the preview's in-plane field ``(2, rows, cols)`` (voxels), or None."""
        step, centre = self.step, self.centre
        if centre is None:
            return slab.u[0, :, (-slab.start) % step::step, ::step]
        if slab.start <= centre < slab.stop:
            return slab.u[0, 1:, centre - slab.start, ::step, ::step]
        return None

    def pick(self, array: np.ndarray) -> np.ndarray:
        """The preview's pixels of a full array on the input grid."""
        if self.centre is None:
            return np.array(array[::self.step, ::self.step])
        return np.array(array[self.centre, ::self.step, ::self.step])


@dataclass
class Warped:
    """What one pass over the slabs produced: the warped ``sources`` (their dtypes), each label map warped
    label-safely (its warper's :attr:`~LabelWarper.out`, lost labels restored), ``norms`` (``|u|`` mm on a
    regular subsample, for the displacement figures) and ``preview_u`` (the preview's in-plane field)."""

    sources: list[np.ndarray]
    labels: list[torch.Tensor]
    norms: torch.Tensor | None = None
    preview_u: np.ndarray | None = None


class _Positions:
    """Sampling positions of every slab, kept while they fit :data:`POSITION_CACHE_BYTES` (for the rare
    restoration of a lost label); a field whose positions do not fit is mapped again for it."""

    def __init__(self, field: InputField, keep: bool):
        self.field, self.kept, self.bytes = field, [] if keep else None, 0

    def add(self, slab: Slab) -> None:
        if self.kept is None:
            return
        self.bytes += slab.pos.numel() * slab.pos.element_size()
        if self.bytes > POSITION_CACHE_BYTES:
            self.kept = None
        else:
            self.kept.append((slab.start, slab.pos))

    def __call__(self) -> Iterator[tuple[int, torch.Tensor]]:
        if self.kept is not None:
            return iter(self.kept)
        return ((slab.start, slab.pos) for slab in self.field.slabs())


def warp_slabs(field: InputField, sources: list[np.ndarray], warpers: list[LabelWarper] = (),
               field_sink: FieldSink | None = None, figures: bool = False,
               preview: PreviewPlan | None = None) -> Warped:
    """Warp ``sources`` (arrays on ``field.grid.input``, any pixel types, not copied) linearly and the
    label maps of ``warpers`` label-safely with one field, in one pass over the slabs of the input grid.
    In the same pass: ``field_sink`` receives the written field block by block (LPS mm), ``figures``
    collects the displacement norms, ``preview`` its in-plane field rows."""
    shape = field.grid.input.shape
    outs = [np.empty(shape, s.dtype) for s in sources]
    positions = _Positions(field, keep=bool(warpers))
    stride = sample_stride(math.prod(shape))
    slab_voxels = math.prod(shape[1:])
    norms, preview_rows = [], []
    with torch.inference_mode():
        for slab in field.slabs():
            for source, out in zip(sources, outs):
                warp_rows(source, out, slab.start, slab.stop, slab.pos)
            for warper in warpers:
                warper.add_slab(slab.start, slab.stop, slab.pos)
            positions.add(slab)
            physical = field.physical(slab.u) if figures or (field_sink and field.output is None) else None
            if figures:
                norms.append(strided_norms(physical, slab.start * slab_voxels, stride))
            if field_sink is not None:
                field_sink(field.written(slab.u, physical))
            if preview is not None and (rows := preview.rows(slab)) is not None:
                preview_rows.append(rows)
        labels = [warper.result(positions) for warper in warpers]
    preview_u = (torch.cat(preview_rows, dim=1) / preview.step).numpy() if preview is not None else None
    return Warped(outs, labels, torch.cat(norms) if figures else None, preview_u)
