"""Pure field maths on regular grids.

Conventions (all functions):
- Tensors are ``(B, C, *spatial)`` with ``len(spatial) = nd`` in {2, 3}.
- A displacement field ``u`` is ``(B, nd, *spatial)`` in **voxels**; channel ``c`` is the
  displacement along tensor spatial axis ``c`` (tensor dimension ``2 + c``).
- Fields are *resampling* (pull) fields: ``warp(I, u)(x) = I(x + u(x))``.
- ``compose(a, b)`` applies ``b`` first, then ``a``: ``x -> x + b(x) + a(x + b(x))``.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

Padding = str  # "zeros" | "border"
Mode = str  # "bilinear" (linear in 2D and 3D) | "bicubic" (2D only) | "nearest"


@lru_cache(maxsize=32)
@torch.inference_mode(False)
def _grid_constants(spatial: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel coordinates ``(1, *spatial, nd)`` and half-extents ``(N-1)/2`` ``(nd,)``, both in xyz order.
    Cached, so made outside inference mode whatever the caller's: autograd may use them later."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in spatial]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).unsqueeze(0)
    half = torch.tensor([(n - 1) / 2 for n in spatial[::-1]], device=device, dtype=dtype)
    return coords, half


def identity_grid(spatial: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of every voxel, ``(1, nd, *spatial)``; channel ``c`` = index along axis ``c``."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in spatial]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def voxel_sides(spatial: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Grid sides ``N`` per channel as a ``(1, nd, 1, ..., 1)`` tensor on ``device`` (cached): multiplies a
    normalised field (published units) into voxels without a host-to-device copy per call."""
    return _cached_sides(tuple(int(n) for n in spatial), torch.device(device), dtype)


@lru_cache(maxsize=32)
@torch.inference_mode(False)
def _cached_sides(spatial: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(spatial, device=device, dtype=dtype).view(1, -1, *([1] * len(spatial)))


def _sampling_grid(u: torch.Tensor) -> torch.Tensor:
    """Voxel displacement ``(B, nd, *spatial)`` -> normalised ``grid_sample`` grid ``(B, *spatial, nd)``.

    Computed as ``(x + u) / ((N - 1) / 2) - 1`` in that order, the arithmetic of the published code:
    recovery over 80 steps amplifies rounding differences, so the order matters for parity. The
    division and subtraction run in place on the fresh sum (same values, fewer allocations).
    """
    spatial = tuple(u.shape[2:])
    if min(spatial) < 2:
        raise ValueError(f"every spatial axis needs at least 2 voxels, got {spatial}")
    coords, half = _grid_constants(spatial, u.device, u.dtype)
    return (u.movedim(1, -1).flip(-1) + coords).div_(half).sub_(1)


SPLIT_MIN_VOXELS = 1 << 16  # smallest output worth splitting across threads (smaller calls gain nothing)


def grid_sample(image: torch.Tensor, grid: torch.Tensor, mode: Mode = "bilinear", padding: Padding = "zeros") -> torch.Tensor:
    """``F.grid_sample(image, grid, mode, padding, align_corners=True)``, on every core of the CPU.

    ``image``: ``(B, C, *in)``; ``grid``: ``(B, *out, nd)`` normalised. PyTorch's CPU kernels run the
    batch elements in parallel but each element on one thread, so a batch-1 call used one core: on
    the CPU it is split along its first output axis into one batch element per thread (the image is
    shared, not copied). Every output value is computed exactly as before (bit for bit).
    """
    parts = min(torch.get_num_threads(), grid.shape[1])
    if (grid.device.type != "cpu" or grid.shape[0] != 1 or parts < 2
            or grid[0, ..., 0].numel() < SPLIT_MIN_VOXELS):
        return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)
    rows = grid.shape[1]
    per = -(-rows // parts)
    parts = -(-rows // per)
    if per * parts != rows:  # pad with copies of the last row; their output is cut off below
        grid = torch.cat([grid, grid[:, -1:].expand(1, per * parts - rows, *grid.shape[2:])], 1)
    out = F.grid_sample(image.expand(parts, *image.shape[1:]), grid.reshape(parts, per, *grid.shape[2:]),
                        mode=mode, padding_mode=padding, align_corners=True)
    return out.transpose(0, 1).reshape(1, image.shape[1], per * parts, *out.shape[3:])[:, :, :rows]


def warp(image: torch.Tensor, u: torch.Tensor, mode: Mode = "bilinear", padding: Padding = "zeros") -> torch.Tensor:
    """Resample ``image`` ``(B, C, *spatial)`` at ``x + u(x)``; ``u`` is ``(B, nd, *spatial)`` in voxels.

    ``image`` and ``u`` share their spatial shape. ``mode='bilinear'`` is (tri)linear,
    ``'bicubic'`` is 2D only, ``'nearest'`` never creates new values.
    """
    if image.shape[2:] != u.shape[2:]:
        raise ValueError(f"image {tuple(image.shape)} and field {tuple(u.shape)} differ in spatial shape")
    grid = _sampling_grid(u)
    if grid.dtype != image.dtype:
        grid = grid.to(image.dtype)
    return grid_sample(image, grid, mode, padding)


def compose(a: torch.Tensor, b: torch.Tensor, padding: Padding = "border") -> torch.Tensor:
    """Field of ``x -> x + b(x) + a(x + b(x))`` (``b`` first, then ``a``), voxels, ``(B, nd, *spatial)``."""
    return b + warp(a, b, "bilinear", padding)


def power(v: torch.Tensor, n: torch.Tensor, padding: Padding = "border") -> torch.Tensor:
    """Self-composition ``v^n`` per batch element by binary exponentiation.

    ``v``: ``(B, nd, *spatial)`` voxels; ``n``: ``(B,)`` non-negative integers. Uses
    ``O(log2 max n)`` compositions (at most ``2 * ceil(log2 max n)``); ``v^0`` is the zero field.
    Powers of one field commute, so the result equals ``n`` sequential compositions up to
    interpolation error. ``n`` is read once on the host: no device synchronisation in the loop.
    """
    counts = n.detach().to("cpu", torch.long)
    if counts.shape != (v.shape[0],) or bool((counts < 0).any()):
        raise ValueError("n must be a (B,) tensor of non-negative integers")
    if counts.numel() and bool((counts == counts[0]).all()):
        return _power_uniform(v, int(counts[0]), padding)
    return _power_mixed(v, counts, padding)


def _power_uniform(v: torch.Tensor, n: int, padding: Padding) -> torch.Tensor:
    """``v^n`` for one exponent ``n`` shared by the whole batch (the sampling case), voxels."""
    result = None
    base = v
    while n:
        if n & 1:
            result = base if result is None else compose(result, base, padding)
        n >>= 1
        if n:
            base = compose(base, base, padding)
    return torch.zeros_like(v) if result is None else result


def _power_mixed(v: torch.Tensor, counts: torch.Tensor, padding: Padding) -> torch.Tensor:
    """``v^n`` with per-element exponents ``counts`` (host ``(B,)``): each bit level composes only the
    batch elements that need it, selected with index tensors built on the host."""
    result = torch.zeros_like(v)
    empty = torch.ones_like(counts, dtype=torch.bool)
    base = v
    while bool((counts > 0).any()):
        take = (counts & 1).bool()
        fill = _indices(take & empty, v.device)
        if fill.numel():
            result = result.index_copy(0, fill, base.index_select(0, fill))
        grow = _indices(take & ~empty, v.device)
        if grow.numel():
            grown = compose(result.index_select(0, grow), base.index_select(0, grow), padding)
            result = result.index_copy(0, grow, grown)
        empty &= ~take
        counts = counts >> 1
        live = _indices(counts > 0, v.device)
        if live.numel():
            squared = compose(base.index_select(0, live), base.index_select(0, live), padding)
            base = base.index_copy(0, live, squared)
    return result


def _indices(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Positions of the true entries of a host boolean ``(B,)`` mask, as a long tensor on ``device``."""
    return mask.nonzero().flatten().to(device)


def power_sequential(v: torch.Tensor, n: torch.Tensor, padding: Padding = "border") -> torch.Tensor:
    """Reference ``v^n``: ``max(n)`` sequential compositions ``u <- compose(u, v)`` from ``u = 0``,
    each batch element stopping at its own ``n`` (the published integrator). Shapes as :func:`power`."""
    n = n.to(device=v.device, dtype=torch.long)
    result = torch.zeros_like(v)
    for step in range(int(n.max()) if n.numel() else 0):
        live = (n > step).view(-1, *([1] * (v.dim() - 1)))
        result = torch.where(live, compose(result, v, padding), result)
    return result


def _gradient(u: torch.Tensor, dim: int) -> torch.Tensor:
    """Derivative of ``u`` along ``dim`` (unit spacing), as ``torch.gradient``: central differences
    inside, one-sided at the two edges; the same values bit for bit, in about half the time (all
    channels in one pass)."""
    n = u.shape[dim]
    if n < 2:
        raise ValueError(f"a Jacobian needs at least 2 voxels along every axis, got {tuple(u.shape[2:])}")
    inner = (u.narrow(dim, 2, n - 2) - u.narrow(dim, 0, n - 2)) * 0.5
    return torch.cat([u.narrow(dim, 1, 1) - u.narrow(dim, 0, 1), inner,
                      u.narrow(dim, n - 1, 1) - u.narrow(dim, n - 2, 1)], dim)


def jacobian_determinant(u: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + u(x)``, ``(B, *spatial)``.

    ``u``: ``(B, nd, *spatial)`` in voxels. Central differences inside, one-sided at the edges
    (as ``numpy.gradient``). The determinant is unit-free and invariant to per-axis spacing.
    """
    nd = u.shape[1]
    grads = [_gradient(u, 2 + c) for c in range(nd)]  # grads[c][:, r] = d u_r / d x_c
    j = [[grads[c][:, r] + 1.0 if r == c else grads[c][:, r] for c in range(nd)] for r in range(nd)]
    if nd == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    if nd == 3:
        return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
                - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
                + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
    raise ValueError(f"fields must be 2D or 3D, got {nd} channels")


def folding_fraction(u: torch.Tensor) -> torch.Tensor:
    """Fraction of voxels with ``det J <= 0`` per batch element, ``(B,)``; ``u`` in voxels."""
    return (jacobian_determinant(u) <= 0).flatten(1).float().mean(1)


def resize(field: torch.Tensor, size: int | tuple[int, ...]) -> torch.Tensor:
    """(Bi/tri)linear resize of ``(B, C, *spatial)`` with ``align_corners=False`` (values unchanged)."""
    nd = field.dim() - 2
    mode = "bilinear" if nd == 2 else "trilinear"
    return F.interpolate(field, size=size, mode=mode, align_corners=False)
