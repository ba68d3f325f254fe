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
    """Control field (control voxels) -> image field (image voxels) on the central ``size`` crop of a
    ``2 * size`` linear upsampling (``align_corners=False``), exactly as published."""
    nd = control.dim() - 2
    side = schedule.control_size
    gain_vox = schedule.gain(size) * size / side
    src = (torch.arange(size // 2, size // 2 + size, device=control.device, dtype=control.dtype) + 0.5)
    src = src * side / (2 * size) - 0.5
    norm = src * (2.0 / (side - 1)) - 1.0
    mesh = torch.meshgrid(*([norm] * nd), indexing="ij")
    grid = torch.stack(mesh[::-1], dim=-1).unsqueeze(0).expand(control.shape[0], *([-1] * (nd + 1)))
    return F.grid_sample(control, grid, mode="bilinear", padding_mode="border", align_corners=True) * gain_vox


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
