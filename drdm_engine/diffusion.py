"""Forward deformation diffusion (spec section 2): random multi-scale velocities composed into
large random fields ``F_full(t)`` (diffusion) and ``F_clean(t)`` (the training target).

Fields returned here are in voxels of the image working grid (side ``N``), channel ``c`` along
tensor axis ``c``; see :mod:`drdm_engine.fields`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Callable

import torch
import torch.nn.functional as F

from . import fields

Integrator = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]


@dataclass(frozen=True)
class DiffusionSchedule:
    """Published forward-diffusion settings.

    ``amplitude``: gain of the control field when it is mapped onto the image grid, in the
    published normalised units (image field = ``amplitude`` x control field). ``None`` reproduces
    the published ``N / S``; ``2.0`` is the geometrically consistent crop rate.
    """

    timesteps: int = 80
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


def _to_image_grid(control: torch.Tensor, size: int, schedule: DiffusionSchedule) -> torch.Tensor:
    """Control field (control voxels) -> image field (image voxels): the central ``size`` crop of a
    ``2 * size`` linear upsampling (``align_corners=False``) of the gain-scaled field, as published.

    When ``2 * size`` is a multiple of the control side, only the control block the crop reads (plus one
    voxel of margin) is upsampled, by the same integer factor: the same interpolation weights as the
    full upsampling, without computing the three quarters of it that the crop discards.
    """
    side = schedule.control_size
    first, length, factor = _crop_block(size, side)
    nd = control.dim() - 2
    block = control[(slice(None), slice(None)) + (slice(first, first + length),) * nd]
    block = block * (schedule.gain(size) * size / side)
    mode = "bilinear" if nd == 2 else "trilinear"
    up = F.interpolate(block, size=(round(length * factor),) * nd, mode=mode, align_corners=False)
    offset = size // 2 - round(first * factor)
    return up[(slice(None), slice(None)) + (slice(offset, offset + size),) * nd]


def _crop_block(size: int, side: int) -> tuple[int, int, float]:
    """``(first, length, factor)``: the control voxels ``first … first + length - 1`` that the central
    ``size`` crop of a ``2 * size`` upsampling reads, and the upsampling factor ``2 size / side``."""
    if (2 * size) % side or side < 4:
        return 0, side, 2 * size / side
    return side // 4 - 1, side // 2 + 2, (2 * size) // side


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
    full = _to_image_grid(integrator(v0, steps_full(t), "border"), size, schedule)
    if not with_clean:
        return full, None
    clean = _to_image_grid(integrator(v, steps_clean(t), "border"), size, schedule)
    return full, clean


def diffuse(image: torch.Tensor, field: torch.Tensor, mode: str | None = None) -> torch.Tensor:
    """Diffused image ``warp(image, field)`` with zero padding; bicubic in 2D, linear in 3D by default."""
    if mode is None:
        mode = "bicubic" if image.dim() == 4 else "bilinear"
    return fields.warp(image, field, mode, "zeros")
