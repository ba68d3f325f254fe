"""DRDM augmentation of one case in physical space: image (+ labels) in, N deformed cases out.

The volume is mapped onto the cubic working grid (isotropic, aspect kept, padded), DRDM samples
fields there, each field is mapped back onto the input's own grid in millimetres, and the
full-resolution input is warped with it (pull convention ``out(x) = in(x + u(x))``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from .checkpoint import DEFAULT_MODEL, LoadedModel, load_checkpoint
from .diffusion import DiffusionSchedule
from .errors import DRDMError
from .geometry import Geometry, WorkingGrid, field_to_input_voxels, sample_rows, slab_positions, to_working, \
    voxels_to_physical
from .intensity import normalise
from .io import Labels
from .labels import LabelWarper
from .metrics import displacement_stats, folding, label_agreement
from .precision import recovery_dtype
from .sampler import RecoverySettings, sample_fields

Progress = Callable[[float, str], None]
DIFFUSION_ONLY_SIZE = {2: 256, 3: 128}
SLAB_VOXELS = 1 << 22


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DRDMError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu or install a CUDA build")
    return torch.device(name)


def resolve_model(model: str | None, ndims: int, device: torch.device) -> LoadedModel | None:
    """``None``/``"default"``: the bundled model when it fits ``ndims`` (else diffusion only);
    ``"none"``: diffusion only; anything else: a checkpoint path."""
    if model is not None and model.lower() == "none":
        return None
    if model is None or model == "default":
        if not DEFAULT_MODEL.is_file():
            return None
        loaded = load_checkpoint(DEFAULT_MODEL, device=device)
        return loaded if loaded.meta.ndims == ndims else None
    return load_checkpoint(model, ndims=ndims, device=device)


@dataclass
class AugmentedCase:
    """One sample: ``image`` and ``labels`` on the input grid (input pixel types), ``field`` the pull
    displacement ``(*shape, nd)`` in LPS mm (float32, array order) on the input grid ``geometry``, and
    quality ``metrics``."""

    image: sitk.Image
    labels: sitk.Image | None
    field: np.ndarray
    geometry: Geometry
    metrics: dict
    preview: dict

    def field_image(self) -> sitk.Image:
        """The field as a SimpleITK vector image (a copy), usable in ``sitk.DisplacementFieldTransform``
        after a cast to ``sitkVectorFloat64``."""
        image = sitk.GetImageFromArray(self.field, isVector=True)
        self.geometry.apply_to(image)
        return image


def _array(image: sitk.Image) -> torch.Tensor:
    return torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))


def _label_array(image: sitk.Image) -> torch.Tensor:
    """Label map as uint8 (values up to 255) or int32, not int64: a full-size label map stays small."""
    array = sitk.GetArrayFromImage(image)
    return torch.from_numpy(array if array.dtype == np.uint8 else array.astype(np.int32))


def _restore_type(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """SimpleITK image of ``array`` with ``like``'s pixel type (floats rounded and clipped into an
    integer type's range, in place: ``array`` is scratch) and geometry."""
    target = sitk.GetArrayViewFromImage(like).dtype
    if np.issubdtype(target, np.integer) and array.dtype.kind == "f":
        info = np.iinfo(target)
        np.rint(array, out=array)
        np.clip(array, info.min, info.max, out=array)
    out = sitk.Cast(sitk.GetImageFromArray(array.astype(target, copy=False)), like.GetPixelID())
    Geometry.of(like).apply_to(out)
    return out


def generate(image: sitk.Image, labels: Labels | None, model: LoadedModel | None, samples: int, depth: int,
             seed: int, device: torch.device = torch.device("cpu"), recovery: str = "published",
             size: int | None = None, progress: Progress | None = None,
             precision: str = "auto") -> list[AugmentedCase]:
    """Deform ``image`` (and ``labels``) ``samples`` times at diffusion depth ``depth``.

    ``model=None`` is diffusion-only (the random forward field at ``depth``, working side ``size``).
    ``precision`` of the recovery network: see :func:`precision.recovery_dtype`. The same ``seed`` on
    the same CPU reproduces the same samples bit for bit.
    """
    geometry = Geometry.of(image)
    nd = geometry.ndims
    schedule = model.meta.schedule if model else DiffusionSchedule()
    if not 0 <= depth < schedule.timesteps:
        raise DRDMError(f"--depth must be in 0…{schedule.timesteps - 1}, got {depth}")
    if samples < 1:
        raise DRDMError(f"--samples must be at least 1, got {samples}")
    n = model.meta.size if model else (size or DIFFUSION_ONLY_SIZE[nd])
    grid = WorkingGrid.fit(geometry, n)
    x = _array(image)[None, None]
    working = to_working(normalise(x), grid).to(device)
    generator = torch.Generator(device).manual_seed(int(seed))
    settings = RecoverySettings(recovery, model.meta.compose_padding if model else "border",
                                autocast=recovery_dtype(precision, device))

    def step(done: int, total: int) -> None:
        if progress is not None:
            progress(0.05 + 0.85 * done / total, f"recovery step {done}/{total}")

    if progress is not None:
        progress(0.02, "sampling deformations")
    with torch.inference_mode():
        ws = sample_fields(working, samples, depth, model.net if model else None, schedule, settings, generator, step)
        composed = ws.composed.float().cpu()
        label_tensor = _label_array(labels.image) if labels is not None else None
        cases = []
        for k in range(samples):
            cases.append(_apply(x, label_tensor, composed[k:k + 1], grid, image, labels))
            if progress is not None:
                progress(0.9 + 0.1 * (k + 1) / samples, f"sample {k + 1}/{samples} warped")
    return cases


def _apply(x: torch.Tensor, label_tensor: torch.Tensor | None, working_field: torch.Tensor, grid: WorkingGrid,
           image: sitk.Image, labels: Labels | None) -> AugmentedCase:
    """Map one working-grid field onto the input grid and warp the full-resolution image and labels."""
    geometry = grid.input
    shape = geometry.shape
    rows = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    out = torch.empty_like(x)
    u_lps = torch.empty((*shape, geometry.ndims), dtype=torch.float32)
    warper = LabelWarper(label_tensor) if label_tensor is not None else None

    def field_fn(start: int, stop: int) -> torch.Tensor:
        return field_to_input_voxels(working_field, grid, start, stop)

    centre = shape[0] // 2 if geometry.ndims == 3 else None
    for start, stop, u, pos in slab_positions(shape, field_fn, rows):
        out[:, :, start:stop] = sample_rows(x, pos, "bilinear")
        u_lps[start:stop] = voxels_to_physical(u, geometry)[0].movedim(0, -1)
        if centre is None:
            u_slice = u[0]
        elif start <= centre < stop:
            u_slice = u[0, 1:, centre - start]
        if warper is not None:
            warper.add_slab(start, stop, pos)
    metrics = {**folding(working_field), **displacement_stats(u_lps)}
    out_labels = None
    if warper is not None:
        warped = warper.result()
        metrics.update(label_agreement(label_tensor, warped, labels.names))
        out_labels = _restore_type(warped.numpy(), labels.image)
    pick = (lambda a: a.copy()) if centre is None else (lambda a: a[centre].copy())
    preview = {"before": pick(x[0, 0].numpy()), "after": pick(out[0, 0].numpy()), "u_voxels": u_slice.numpy(),
               "spacing": tuple(reversed(geometry.spacing))[-2:],
               "labels_before": None if label_tensor is None else pick(label_tensor.numpy()),
               "labels_after": None if out_labels is None else pick(sitk.GetArrayViewFromImage(out_labels))}
    return AugmentedCase(_restore_type(out[0, 0].numpy(), image), out_labels, u_lps.numpy(), geometry, metrics, preview)

