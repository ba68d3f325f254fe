"""An image's DRDM fields on its cubic working grid: the image mapped there (isotropic, aspect kept,
padded, intensities normalised), fields sampled there in one batch."""
from __future__ import annotations

from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from ..core.diffusion import DiffusionSchedule
from ..core.errors import DRDMError
from ..core.grid import Geometry, WorkingGrid, to_working
from ..core.intensity import normalise_
from ..model.checkpoint import LoadedModel
from ..model.precision import recovery_dtype
from ..model.sampler import RecoverySettings, sample_fields

DIFFUSION_ONLY_SIZE = {2: 256, 3: 128}
"""Working grid side without a model, per dimension (a model uses its own)."""

StepReport = Callable[[int, int], None]


def schedule_of(model: LoadedModel | None) -> DiffusionSchedule:
    """The diffusion schedule a run samples with: the model's own, or the published one."""
    return model.meta.schedule if model else DiffusionSchedule()


def check_depth(depth: int, schedule: DiffusionSchedule) -> None:
    """Refuse a diffusion depth outside ``0 … T-1`` of ``schedule`` with one line."""
    if not 0 <= depth < schedule.timesteps:
        raise DRDMError(f"--depth must be in 0…{schedule.timesteps - 1}, got {depth}")


def working_size(model: LoadedModel | None, size: int | None, ndims: int) -> int:
    """Working grid side: the model's own, else ``size``, else :data:`DIFFUSION_ONLY_SIZE`."""
    return model.meta.size if model else (size or DIFFUSION_ONLY_SIZE[ndims])


def float_array(image: sitk.Image) -> torch.Tensor:
    """The image's voxels as a float32 tensor of its own (a copy: the caller may overwrite it)."""
    return torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))


def sample_working(image: sitk.Image, model: LoadedModel | None, samples: int, depth: int, seed: int,
                   device: torch.device = torch.device("cpu"), recovery: str = "published", size: int | None = None,
                   precision: str = "auto", step: StepReport | None = None) -> tuple[torch.Tensor, WorkingGrid]:
    """Sample ``samples`` DRDM fields of ``image`` (2D, or the in-plane slice of a one-slice volume) on
    its working grid, in one batch: ``(samples, nd, N^nd)`` float32 on the CPU, working voxels.

    ``model=None`` is diffusion-only (the random forward field at ``depth``, working side ``size``;
    the image is not read). ``step(done, total)`` after each recovery step. The same ``seed`` on the
    same CPU reproduces the same fields bit for bit."""
    geometry = Geometry.of(image)
    nd = geometry.ndims
    n = working_size(model, size, nd)
    grid = WorkingGrid.fit(geometry, n)
    if model is None:  # diffusion only: the random field needs the working grid's size, not the image
        working = torch.zeros((), device=device).expand((1, 1) + (n,) * nd)
    else:
        working = to_working(normalise_(float_array(image)[None, None]), grid).to(device)
    generator = torch.Generator(device).manual_seed(int(seed))
    settings = RecoverySettings(recovery, model.meta.compose_padding if model else "border",
                                autocast=recovery_dtype(precision, device))
    with torch.inference_mode():
        drawn = sample_fields(working, samples, depth, model.net if model else None, schedule_of(model), settings,
                              generator, step)
        composed = drawn.composed.float().cpu()
    if not bool(torch.isfinite(torch.stack(composed.aminmax())).all()):  # NaN and inf reach min or max
        raise DRDMError("the sampled deformation field is not finite (NaN/inf); rerun with --precision fp32 "
                        "or check the model")
    return composed, grid
