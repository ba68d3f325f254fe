"""Physical geometry: mapping an input grid onto the cubic working grid and fields back to millimetres.

Array order everywhere here is numpy/SimpleITK order ``(k, j, i)`` (3D) or ``(j, i)`` (2D): tensor
spatial axis ``a`` is SimpleITK index dimension ``nd - 1 - a``. The working grid shares the input's
direction and centre, is isotropic (spacing ``max(size * spacing) / N``), and covers the input's
whole extent (the shorter axes are padded), so the aspect ratio is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import fields


@dataclass(frozen=True)
class Geometry:
    """Image grid: ``size``, ``spacing`` (mm), ``origin`` (mm, LPS) in SimpleITK (x, y, z) order;
    ``direction`` row-major ``nd x nd`` (columns are the index axes in LPS)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def ndims(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape, ``(k, j, i)`` order."""
        return tuple(reversed(self.size))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(self.ndims, self.ndims)

    def matches(self, other: "Geometry", tol: float = 1e-4) -> bool:
        """Same grid within ``tol`` (relative for spacing, mm for origin, absolute for direction)."""
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=tol, atol=0)
                and np.allclose(self.origin, other.origin, rtol=0, atol=tol * max(1.0, max(self.spacing)))
                and np.allclose(self.direction, other.direction, atol=tol))

    @classmethod
    def of(cls, image) -> "Geometry":
        """Geometry of a SimpleITK image."""
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    def apply_to(self, image) -> None:
        """Copy spacing, origin and direction onto a SimpleITK image of the same size."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)


@dataclass(frozen=True)
class WorkingGrid:
    """Cubic working grid of side ``size`` and isotropic ``spacing`` (mm) centred on an input grid.

    Working voxel ``w`` along array axis ``a`` sits at input continuous index
    ``i_a = (w * spacing + offset_a) / input_spacing_a``.
    """

    input: Geometry
    size: int
    spacing: float

    @classmethod
    def fit(cls, geometry: Geometry, size: int) -> "WorkingGrid":
        extent = max(n * s for n, s in zip(geometry.size, geometry.spacing))
        return cls(geometry, size, extent / size)

    def _axes(self) -> list[tuple[int, float]]:
        """Per array axis: (input voxels, input spacing)."""
        return list(zip(reversed(self.input.size), reversed(self.input.spacing)))

    def offsets_mm(self) -> list[float]:
        """Per array axis, position of working voxel 0 relative to input voxel 0 (mm along that axis)."""
        return [(n - 1) * s / 2 - (self.size - 1) * self.spacing / 2 for n, s in self._axes()]

    def working_to_input_index(self) -> list[tuple[float, float]]:
        """Per array axis ``(scale, shift)`` with ``i = scale * w + shift`` (input voxels)."""
        return [(self.spacing / s, o / s) for (_, s), o in zip(self._axes(), self.offsets_mm())]

    def is_input(self) -> bool:
        """Whether the working grid is the input grid itself (a cubic input of side ``size``): every
        axis maps onto itself with scale 1 and shift 0 (to 1e-9 voxel)."""
        return (self.input.shape == (self.size,) * self.input.ndims
                and all(abs(scale - 1) < 1e-9 and abs(shift) < 1e-9 for scale, shift in self.input_to_working_index()))

    def input_to_working_index(self) -> list[tuple[float, float]]:
        """Per array axis ``(scale, shift)`` with ``w = scale * i + shift`` (working voxels)."""
        return [(s / self.spacing, -o / self.spacing) for (_, s), o in zip(self._axes(), self.offsets_mm())]


def _affine_axis_grid(out_shape: tuple[int, ...], maps: list[tuple[float, float]], src_shape: tuple[int, ...],
                      start: int = 0, device=None) -> torch.Tensor:
    """``grid_sample`` grid ``(1, *out_shape, nd)`` sampling ``src`` at ``scale * index + shift`` per axis.

    ``start`` offsets the index along axis 0 (for slabs)."""
    coords = []
    for a, (n, (scale, shift), m) in enumerate(zip(out_shape, maps, src_shape)):
        idx = torch.arange(n, dtype=torch.float64, device=device) + (start if a == 0 else 0)
        coords.append(((scale * idx + shift) * (2.0 / (m - 1)) - 1.0).float())  # float64 per axis only
    mesh = torch.meshgrid(*coords, indexing="ij")
    return torch.stack(mesh[::-1], dim=-1).unsqueeze(0)


def to_working(array: torch.Tensor, grid: WorkingGrid, mode: str = "bilinear") -> torch.Tensor:
    """Resample an input-grid tensor ``(B, C, *input_shape)`` onto the working grid ``(B, C, N^nd)``
    (linear, zero outside the input)."""
    nd = grid.input.ndims
    out_shape = (grid.size,) * nd
    g = _affine_axis_grid(out_shape, grid.working_to_input_index(), grid.input.shape, device=array.device)
    g = g.expand(array.shape[0], *g.shape[1:])
    return fields.grid_sample(array, g, mode, "zeros")


def field_to_input_voxels(field: torch.Tensor, grid: WorkingGrid, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Working-grid field ``(B, nd, N^nd)`` (working voxels) -> input-grid field ``(B, nd, *shape)``
    in **input voxels** along each array axis, for input rows ``start:stop`` of array axis 0."""
    shape = list(grid.input.shape)
    stop = shape[0] if stop is None else stop
    if grid.is_input():  # the working grid is the input grid: nothing to resample
        return field[:, :, start:stop]
    shape[0] = stop - start
    g = _affine_axis_grid(tuple(shape), grid.input_to_working_index(), (grid.size,) * grid.input.ndims,
                          start, field.device)
    g = g.expand(field.shape[0], *g.shape[1:]).to(field.dtype)
    sampled = fields.grid_sample(field, g, "bilinear", "border")
    ratio = torch.tensor([grid.spacing / s for _, s in grid._axes()], dtype=field.dtype, device=field.device)
    return sampled * ratio.view(1, -1, *([1] * grid.input.ndims))


def voxels_to_physical(u: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Input-voxel field ``(B, nd, *shape)`` (array-axis channels) -> physical LPS mm ``(B, nd, *shape)``
    with channels ``(x, y, z)``: ``u_lps = Direction @ (spacing * u_index)`` in index order ``(i, j, k)``."""
    nd = geometry.ndims
    index_mm = torch.stack([u[:, nd - 1 - d] * geometry.spacing[d] for d in range(nd)], dim=1)
    m = torch.as_tensor(geometry.direction_matrix, dtype=u.dtype, device=u.device)
    return torch.einsum("rc,bc...->br...", m, index_mm)


def slab_positions(shape: tuple[int, ...], field_fn, rows: int):
    """Yield ``(start, stop, u, pos)`` over slabs of array axis 0: ``u = field_fn(start, stop)`` is the
    field ``(1, nd, stop - start, ...)`` in input voxels and ``pos = x + u(x)`` the positions to pull from."""
    for start in range(0, shape[0], rows):
        stop = min(shape[0], start + rows)
        u = field_fn(start, stop)
        coords = fields.identity_grid(tuple(u.shape[2:]), u.device, u.dtype)
        coords[:, 0] += start
        yield start, stop, u, coords + u


def source_rows(pos: torch.Tensor, length: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of array axis 0 (of ``length``) that linear sampling at ``pos`` reads."""
    lo = int(torch.floor(pos[:, 0].min()).clamp(0, length - 1))
    hi = int(torch.floor(pos[:, 0].max()).clamp(0, length - 1)) + 2
    return lo, min(hi, length)


def sample_rows(source: torch.Tensor, pos: torch.Tensor, mode: str, lo: int = 0) -> torch.Tensor:
    """Sample ``source`` ``(1, C, rows, ...)`` (rows ``lo...`` of the full grid) at input-voxel positions
    ``pos`` ``(1, nd, *out)``. Outside the source: nearest edge value (border padding), so no
    background value is invented."""
    shape = source.shape[2:]
    shifted = pos.clone()
    shifted[:, 0] -= lo
    half = torch.tensor([max(n - 1, 1) / 2 for n in shape], dtype=pos.dtype, device=pos.device)
    grid = (shifted / half.view(1, -1, *([1] * len(shape))) - 1).movedim(1, -1).flip(-1).to(source.dtype)
    return fields.grid_sample(source, grid, mode, "border")
