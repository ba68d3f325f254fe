"""DRDM sampling on the cubic working grid (spec section 5): diffuse to depth ``T0``, recover step
by step with RecResACNet, return the composed resampling field.

All fields here are ``(B, nd, *spatial)`` in working-grid voxels (channel ``c`` along tensor axis ``c``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import fields
from .diffusion import DiffusionSchedule, diffuse, forward_fields
from .network import RecResACNet

Progress = Callable[[int, int], None]

RECOVERY_SCHEDULES = ("published", "from-depth")


@dataclass(frozen=True)
class RecoverySettings:
    """How recovery runs.

    ``schedule``: ``"published"`` runs every step ``T-1 … 0`` whatever the depth (published code);
    ``"from-depth"`` runs ``T0 … 0`` (the paper's Algorithm 2, faster).
    ``compose_padding``: padding of the field composition in the loop (published 2D: ``"zeros"``,
    3D: ``"border"``). ``image_mode``: interpolation of the image (``None``: bicubic 2D, linear 3D).
    """

    schedule: str = "published"
    compose_padding: str = "border"
    image_mode: str | None = None

    def steps(self, depth: int, timesteps: int) -> range:
        if self.schedule not in RECOVERY_SCHEDULES:
            raise ValueError(f"recovery schedule must be one of {RECOVERY_SCHEDULES}, got {self.schedule!r}")
        first = timesteps - 1 if self.schedule == "published" else depth
        return range(first, -1, -1)


def recover(model: RecResACNet, image: torch.Tensor, field: torch.Tensor, steps: range,
            settings: RecoverySettings = RecoverySettings(), progress: Progress | None = None) -> torch.Tensor:
    """Recovery loop: for each step ``i``, ``p = net(warp(image, D), i)`` and ``D <- compose(D, p)``.

    ``image`` ``(B, C, *spatial)`` is the undeformed input, ``field`` ``(B, nd, *spatial)`` the starting
    field ``D`` (voxels). Returns the final ``D`` in voxels. ``progress(done, total)`` after each step.
    """
    sides = torch.tensor(image.shape[2:], dtype=field.dtype, device=field.device)
    sides = sides.view(1, -1, *([1] * (image.dim() - 2)))
    batch = image.shape[0]
    d = field
    moved = diffuse(image, d, settings.image_mode)
    for done, step in enumerate(steps, 1):
        t = torch.full((batch,), step, dtype=torch.long, device=image.device)
        p = model(moved, t).to(d.dtype) * sides
        d = fields.compose(d, p, settings.compose_padding)
        moved = diffuse(image, d, settings.image_mode)
        if progress is not None:
            progress(done, len(steps))
    return d


@dataclass
class WorkingSamples:
    """Fields of ``B`` samples on the working grid, voxels: ``diffused`` (``F_full(T0)``) and
    ``composed`` (after recovery; equal to ``diffused`` in diffusion-only mode)."""

    diffused: torch.Tensor
    composed: torch.Tensor
    recovered: bool


def sample_fields(image: torch.Tensor, samples: int, depth: int, model: RecResACNet | None,
                  schedule: DiffusionSchedule = DiffusionSchedule(),
                  settings: RecoverySettings = RecoverySettings(),
                  generator: torch.Generator | None = None,
                  progress: Progress | None = None) -> WorkingSamples:
    """Draw ``samples`` DRDM fields for one image ``(1, C, *spatial)`` on a cubic working grid.

    Without a model, the composed field is the random forward field at ``depth`` (diffusion only).
    """
    if not 0 <= depth < schedule.timesteps:
        raise ValueError(f"depth must be in 0…{schedule.timesteps - 1}, got {depth}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    nd, size = image.dim() - 2, image.shape[2]
    t = torch.full((samples,), depth, dtype=torch.long, device=image.device)
    diffused, _ = forward_fields(t, nd, size, schedule, generator, with_clean=False)
    if model is None:
        return WorkingSamples(diffused, diffused, recovered=False)
    batch = image.expand(samples, *image.shape[1:])
    composed = recover(model, batch, diffused, settings.steps(depth, schedule.timesteps), settings, progress)
    return WorkingSamples(diffused, composed, recovered=True)
