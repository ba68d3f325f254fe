"""Exact ground-truth fields between two deformed samples of one case, for registration training.

Sample ``a`` is ``I(phi_a(x))`` and sample ``b`` is ``I(phi_b(x))`` with ``phi(x) = x + u(x)`` (pull
convention). Resampling ``a`` with ``w`` gives ``b`` when ``phi_a(x + w(x)) = phi_b(x)``, i.e.
``w = compose(inverse(u_a), u_b)``. The inverse of ``phi_a`` is computed numerically, by fixed-point
iteration, at exactly the points ``phi_b(x)`` where the composition needs it: ``w = u_b + v`` with
``v = -u_a(x + u_b(x) + v)``. Its residual at the grid nodes and the error of ``w`` between the nodes
(where it is interpolated) are measured and reported. Near the volume's edges ``phi_b(x)`` can lie
outside what ``phi_a`` reaches (sample ``b`` shows anatomy that ``a`` does not hold): no field can
be exact there; those nodes are counted (``unreachable_fraction``). Fields are ``(1, nd, N^nd)`` in working voxels.
"""
from __future__ import annotations

import torch

from . import fields
from .metrics import sample_stride
from .order import quantile

ITERATIONS = 60
UNREACHABLE = 0.01  # working voxels: a node whose fixed-point residual stays above this has no inverse


def between(u_a: torch.Tensor, u_b: torch.Tensor, iterations: int = ITERATIONS) -> tuple[torch.Tensor, dict[str, float]]:
    """Field ``w`` (voxels) that resamples sample ``a`` onto sample ``b``, and its errors
    ``|phi_a(x + w(x)) - phi_b(x)|`` in voxels: ``inversion_*`` at the grid nodes (the fixed-point
    residual) and ``pair_*`` at the cell centres (``w`` interpolated), each mean, 99th percentile, max.
    Converges where ``phi_a`` is locally invertible (no folding)."""
    w = resampling_field(u_a, u_b, iterations)
    residual = _error(u_a, u_b, w)
    return w, {**_summary("inversion", residual), **_summary("pair", _error_between_nodes(u_a, u_b, w)),
               "unreachable_fraction": float((residual > UNREACHABLE).double().mean())}


def resampling_field(u_a: torch.Tensor, u_b: torch.Tensor, iterations: int = ITERATIONS) -> torch.Tensor:
    """Field ``w`` (voxels) with ``phi_a(x + w(x)) = phi_b(x)``, by fixed-point iteration (no error
    figures; :func:`between` adds them). ``u_b = 0`` gives the inverse of ``u_a``."""
    v = -fields.warp(u_a, u_b, "bilinear", "border")
    for _ in range(iterations):
        v = -fields.warp(u_a, u_b + v, "bilinear", "border")
    return u_b + v


def _error(u_a: torch.Tensor, u_b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``|w + u_a(x + w) - u_b|`` per voxel, ``(1, *spatial)``."""
    return (fields.compose(u_a, w) - u_b).norm(dim=1)


def _error_between_nodes(u_a: torch.Tensor, u_b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The same error at the cell centres ``x + 1/2`` (all fields linearly interpolated there)."""
    half = torch.full_like(w, 0.5)
    w_mid, u_b_mid = fields.warp(w, half, "bilinear", "border"), fields.warp(u_b, half, "bilinear", "border")
    error = (w_mid + fields.warp(u_a, half + w_mid, "bilinear", "border") - u_b_mid).norm(dim=1)
    return error[(slice(None),) + (slice(0, -1),) * (w.dim() - 2)]


def _summary(name: str, error: torch.Tensor) -> dict[str, float]:
    flat = error.flatten().float()
    sample = flat[::sample_stride(flat.numel())]
    return {f"{name}_mean": float(flat.double().mean()), f"{name}_p99": float(quantile(sample, 0.99)),
            f"{name}_max": float(flat.max())}
