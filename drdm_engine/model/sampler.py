"""DRDM sampling on the cubic working grid (spec section 5): diffuse to depth ``T0``, recover step
by step with RecResACNet, return the composed resampling field.

All fields here are ``(B, nd, *spatial)`` in working-grid voxels (channel ``c`` along tensor axis ``c``).
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..core import fields
from ..core.diffusion import DiffusionSchedule, Integrator, diffuse, forward_fields
from .layer_choice import LAYERS
from .network import RecResACNet

Progress = Callable[[int, int], None]

RECOVERY_SCHEDULES = ("published", "from-depth")


@dataclass(frozen=True)
class RecoverySettings:
    """How recovery runs.

    ``schedule``: ``"published"`` runs every step ``T-1 … 0`` whatever the depth (published code);
    ``"from-depth"`` runs ``T0 … 0`` (the paper's Algorithm 2, faster; a different sampler).
    ``compose_padding``: padding of the field composition in the loop (published 2D: ``"zeros"``,
    3D: ``"border"``). ``image_mode``: interpolation of the image (``None``: bicubic 2D, linear 3D).

    Speed levers (none changes the maths; see ``bench/README.md`` for their measured effect):
    ``inference``: run under ``torch.inference_mode`` (in-place activations in the network);
    ``fast_layers``: the network's fast layers (every fp32 CPU convolution through oneDNN, channels-last
    throughout, the instance norm keeping that layout: ``model/cpu/``), outputs within 1e-5 of
    PyTorch's own layers; ``False`` runs PyTorch's own layers (the published ops);
    ``autocast``: ``None`` (fp32) or ``torch.float16`` / ``torch.bfloat16`` for the network on the
    image's device (fields stay fp32); ``compile``: run the network through ``torch.compile`` (measured
    slower than the eager fast layers, with graph breaks).
    """

    schedule: str = "published"
    compose_padding: str = "border"
    image_mode: str | None = None
    inference: bool = True
    fast_layers: bool = True
    autocast: torch.dtype | None = None
    compile: bool = False

    def steps(self, depth: int, timesteps: int) -> range:
        """Network steps of one recovery, highest first."""
        if self.schedule not in RECOVERY_SCHEDULES:
            raise ValueError(f"recovery schedule must be one of {RECOVERY_SCHEDULES}, got {self.schedule!r}")
        first = timesteps - 1 if self.schedule == "published" else depth
        return range(first, -1, -1)


REFERENCE = RecoverySettings(inference=False, fast_layers=False)
"""The faithful published path: fp32, published schedule, eager network with PyTorch's own layers under
``torch.no_grad``."""


def _grad_context(settings: RecoverySettings) -> contextlib.AbstractContextManager:
    return torch.inference_mode() if settings.inference else torch.no_grad()


def _layers_context(settings: RecoverySettings, device: torch.device) -> contextlib.AbstractContextManager:
    """The fast layers' recovery block on ``device`` (on the CPU: weights reordered once, freed memory
    kept for the next layers), or PyTorch's own layers with the C library's defaults, as the published
    code runs."""
    return LAYERS.recovery(device) if settings.fast_layers else LAYERS.reference()


def _autocast_context(settings: RecoverySettings, device: torch.device) -> contextlib.AbstractContextManager:
    if settings.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=settings.autocast)


_COMPILED: "weakref.WeakKeyDictionary[RecResACNet, Callable]" = weakref.WeakKeyDictionary()


def _network(model: RecResACNet, settings: RecoverySettings) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The callable that evaluates ``model`` under ``settings`` (compiled once per model when asked)."""
    if not settings.compile:
        return model
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model, dynamic=False)
    return _COMPILED[model]


def recover(model: RecResACNet, image: torch.Tensor, field: torch.Tensor, steps: range,
            settings: RecoverySettings = RecoverySettings(), progress: Progress | None = None) -> torch.Tensor:
    """Recovery loop: for each step ``i``, ``p = net(warp(image, D), i)`` and ``D <- compose(D, p)``.

    ``image`` ``(B, C, *spatial)`` is the undeformed input, ``field`` ``(B, nd, *spatial)`` the starting
    field ``D`` (voxels); all ``B`` samples share one network call per step. Returns the final ``D`` in
    voxels (fp32 whatever ``settings.autocast``). ``progress(done, total)`` after each step.
    """
    sides = fields.voxel_sides(tuple(image.shape[2:]), field.device, field.dtype)
    network = _network(model, settings)
    all_t = torch.tensor(list(steps), dtype=torch.long).to(image.device)
    batch = image.shape[0]
    with _grad_context(settings), _layers_context(settings, image.device):
        d = field
        moved = diffuse(image, d, settings.image_mode)
        for done, t in enumerate(all_t.unsqueeze(1).expand(-1, batch), 1):
            with _autocast_context(settings, image.device):
                p = network(moved, t)
            d = fields.compose(d, p.to(d.dtype) * sides, settings.compose_padding)
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
                  progress: Progress | None = None,
                  integrator: Integrator = fields.power) -> WorkingSamples:
    """Draw ``samples`` DRDM fields for one image ``(1, C, *spatial)`` on a cubic working grid.

    All samples are diffused and recovered as one batch (one network call per step). ``generator``
    lives on the image's device. Without a model, the composed field is the random forward field at
    ``depth`` (diffusion only). ``integrator``: :func:`fields.power` (default) or
    :func:`fields.power_sequential` (published).
    """
    if not 0 <= depth < schedule.timesteps:
        raise ValueError(f"depth must be in 0…{schedule.timesteps - 1}, got {depth}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    nd, size = image.dim() - 2, image.shape[2]
    t = torch.full((samples,), depth, dtype=torch.long, device=image.device)
    with _grad_context(settings):
        diffused, _ = forward_fields(t, nd, size, schedule, generator, integrator, with_clean=False)
    if model is None:
        return WorkingSamples(diffused, diffused, recovered=False)
    batch = image.expand(samples, *image.shape[1:])
    composed = recover(model, batch, diffused, settings.steps(depth, schedule.timesteps), settings, progress)
    return WorkingSamples(diffused, composed, recovered=True)


def sample_fields_reference(image: torch.Tensor, samples: int, depth: int, model: RecResACNet | None,
                            schedule: DiffusionSchedule = DiffusionSchedule(),
                            compose_padding: str = "border", image_mode: str | None = None,
                            generator: torch.Generator | None = None) -> WorkingSamples:
    """The published way, kept as the in-run baseline of the benches: one sample at a time, sequential
    composition, fp32, published schedule, eager ops under ``torch.no_grad``. Shapes as
    :func:`sample_fields`."""
    settings = replace(REFERENCE, compose_padding=compose_padding, image_mode=image_mode)
    drawn = [sample_fields(image, 1, depth, model, schedule, settings, generator,
                           integrator=fields.power_sequential) for _ in range(samples)]
    return WorkingSamples(torch.cat([w.diffused for w in drawn]), torch.cat([w.composed for w in drawn]),
                          recovered=model is not None)
