"""Forward deformation diffusion (spec section 2): random multi-scale velocities composed into
large random fields ``F_full(t)`` (diffusion) and ``F_clean(t)`` (the training target).

Fields returned here are in voxels of the image working grid (side ``N``), channel ``c`` along
tensor axis ``c``; see :mod:`drdm_engine.core.fields`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from . import fields
from .defaults import TIMESTEPS

Integrator = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]


@dataclass(frozen=True)
class DiffusionSchedule:
    """Published forward-diffusion settings.

    ``amplitude``: gain of the control field when it is mapped onto the image grid, in the
    published normalised units (image field = ``amplitude`` x control field). ``None`` reproduces
    the published ``N / S``; ``2.0`` is the geometrically consistent crop rate.
    """

    timesteps: int = TIMESTEPS
    v_scale: float = 4e-5
    control_size: int = 64
    noise_ratio: float = 0.08
    amplitude: float | None = None

    def gain(self, size: int) -> float:
        """Normalised-field gain from control grid to an image grid of side ``size``."""
        return size / self.control_size if self.amplitude is None else self.amplitude

    def to_dict(self) -> dict:
        return asdict(self)


def steps_full(t: torch.Tensor) -> torch.Tensor:
    """Compositions of the perturbed velocity at step ``t``: ``clamp(floor(2 t^1.3 / 3), 1, 200)``."""
    return torch.clamp(torch.floor(2.0 * t.double() ** 1.3 / 3.0), 1, 200).long()


def steps_clean(t: torch.Tensor) -> torch.Tensor:
    """Compositions of the clean velocity at step ``t``: ``floor(t^0.6)``."""
    return torch.floor(t.double() ** 0.6).long()


def random_velocity(batch: int, ndims: int, schedule: DiffusionSchedule, scale: float,
                    generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Multi-scale random velocity on the control grid, ``(B, nd, S^nd)`` in control voxels.

    Sum over sides ``s = S, S/2, ...`` (``min(5, log2 S - 2)`` levels) of Gaussian noise with
    standard deviation ``scale * S / s`` (normalised units), linearly resized to ``S``.
    """
    side = schedule.control_size
    levels = min(5, int(math.log2(side)) - 2)
    total = None
    for level in range(levels):
        s = side >> level
        noise = torch.randn((batch, ndims) + (s,) * ndims, generator=generator, device=device)
        noise = noise * (scale * side / s)
        if s != side:
            noise = fields.resize(noise, side)
        total = noise if total is None else total + noise
    return total * side


def _to_image_grid(control: torch.Tensor, size: int, schedule: DiffusionSchedule,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Control field (control voxels) -> image field (image voxels): the central ``size`` crop of a
    ``2 * size`` linear upsampling (``align_corners=False``) of the gain-scaled field, as published.

    Computed separably, one matrix product per axis with the interpolation weights of the cropped
    rows only (:func:`_crop_weights`): the crop of the full upsampling to float rounding, without
    computing the part the crop discards. The last product is written into ``out`` (a contiguous
    ``(B, nd, size^nd)`` tensor) when given.
    """
    side = schedule.control_size
    weights, first = _crop_weights(size, side, control.dtype, control.device)
    nd = control.dim() - 2
    span = weights.shape[1]
    block = control[(slice(None), slice(None)) + (slice(first, first + span),) * nd]
    result = block @ (weights * (schedule.gain(size) * size / side)).T  # last axis: (..., span) -> (..., size)
    lead = result.shape[:2]
    for axis in range(nd - 2, -1, -1):  # each earlier axis as the rows of a matrix product
        rows = result.reshape(*lead, *result.shape[2:2 + axis], span, -1)
        if axis == 0 and out is not None:
            return torch.matmul(weights, rows, out=out.view(*lead, size, -1)).view(out.shape)
        result = (weights @ rows).reshape(*lead, *result.shape[2:2 + axis], size, *result.shape[3 + axis:])
    return result


def _crop_weights(size: int, side: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, int]:
    """Linear interpolation weights ``(size, span)`` of the central ``size`` outputs of an
    ``align_corners=False`` upsampling from ``side`` to ``2 * size`` points, over the control points
    ``first … first + span - 1`` they read; returns ``(weights, first)``."""
    out = torch.arange(size // 2, size // 2 + size, dtype=torch.float64)
    source = ((out + 0.5) * (side / (2 * size)) - 0.5).clamp_min(0)
    low = source.floor().long()
    high = (low + 1).clamp_max(side - 1)
    first, last = int(low.min()), int(high.max())
    weights = torch.zeros(size, last - first + 1, dtype=torch.float64)
    rows = torch.arange(size)
    weights[rows, low - first] += 1 - (source - low)
    weights[rows, high - first] += source - low
    return weights.to(device, dtype), first


def forward_fields(t: torch.Tensor, ndims: int, size: int, schedule: DiffusionSchedule = DiffusionSchedule(),
                   generator: torch.Generator | None = None, integrator: Integrator = fields.power,
                   with_clean: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random forward fields at steps ``t`` ``(B,)``: ``(F_full, F_clean)``, each ``(B, nd, size^nd)``
    in image voxels. ``integrator`` is :func:`fields.power` (fast) or :func:`fields.power_sequential`
    (published). ``F_clean`` is ``None`` when ``with_clean`` is false."""
    t = t.long()
    batch, device = t.shape[0], t.device
    v = random_velocity(batch, ndims, schedule, schedule.v_scale, generator, device)
    v_noise = random_velocity(batch, ndims, schedule, schedule.noise_ratio * schedule.v_scale, generator, device)
    v0 = v + fields.warp(v_noise, v, "bilinear", "border")
    full = _integrate_to_image(v0, steps_full(t), size, schedule, integrator)
    if not with_clean:
        return full, None
    return full, _integrate_to_image(v, steps_clean(t), size, schedule, integrator)


def _integrate_to_image(v: torch.Tensor, n: torch.Tensor, size: int, schedule: DiffusionSchedule,
                        integrator: Integrator) -> torch.Tensor:
    """``v^n`` on the control grid mapped onto the image grid, ``(B, nd, size^nd)`` image voxels. On the
    CPU one batch element at a time into one output (batch-1 compositions use every thread there):
    the same values as the whole batch at once, with a batch element's temporaries instead of the
    batch's."""
    if v.device.type != "cpu" or v.shape[0] == 1:
        return _to_image_grid(integrator(v, n, "border"), size, schedule)
    out = torch.empty((v.shape[0], v.shape[1]) + (size,) * (v.dim() - 2), dtype=v.dtype)
    for k in range(v.shape[0]):
        _to_image_grid(integrator(v[k:k + 1], n[k:k + 1], "border"), size, schedule, out[k:k + 1])
    return out


def diffuse(image: torch.Tensor, field: torch.Tensor, mode: str | None = None) -> torch.Tensor:
    """Diffused image ``warp(image, field)`` with zero padding; bicubic in 2D, linear in 3D by default."""
    if mode is None:
        mode = "bicubic" if image.dim() == 4 else "bilinear"
    return fields.warp(image, field, mode, "zeros")
