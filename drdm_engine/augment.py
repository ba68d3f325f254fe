"""DRDM augmentation of one case in physical space: image (+ labels) in, N deformed cases out.

The volume is mapped onto the cubic working grid (isotropic, aspect kept, padded), DRDM samples
fields there, each field is mapped back onto the input's own grid in millimetres, and the
full-resolution input is warped with it (pull convention ``out(x) = in(x + u(x))``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from .checkpoint import DEFAULT_MODEL, LoadedModel, load_checkpoint
from .diffusion import DiffusionSchedule
from .errors import DRDMError
from .geometry import Geometry, WorkingGrid, field_to_input_voxels, sample_rows, slab_positions, source_rows, \
    to_working, voxels_to_physical
from .intensity import normalise_
from .io import Labels
from .labels import LabelWarper
from .metrics import displacement_stats, folding, label_agreement, sample_stride, strided_norms
from .model_zoo import resolve_name
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
    ``"none"``: diffusion only; a bundled model's name (``drdm_engine.model_zoo``); anything else: a path."""
    if model is not None and model.lower() == "none":
        return None
    if model is None or model == "default":
        if not DEFAULT_MODEL.is_file():
            return None
        loaded = load_checkpoint(DEFAULT_MODEL, device=device)
        return loaded if loaded.meta.ndims == ndims else None
    return load_checkpoint(resolve_name(model), ndims=ndims, device=device)


@dataclass
class InputField:
    """One sample's displacement field on the input grid, computed slab by slab on demand from its
    working-grid field (a full-size field is ``nd`` float copies of the image; it is never held).

    ``working``: ``(1, nd, N^nd)`` in working voxels; ``rows``: slab height along array axis 0."""

    working: torch.Tensor
    grid: WorkingGrid
    rows: int

    def voxels(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` in input voxels along each array axis, ``(1, nd, stop - start, ...)``."""
        return field_to_input_voxels(self.working, self.grid, start, stop)

    def lps_mm(self) -> Iterator[np.ndarray]:
        """The field as consecutive row blocks ``(rows, *shape[1:], nd)``: LPS mm, float32, array order."""
        length = self.grid.input.shape[0]
        for start in range(0, length, self.rows):
            with torch.inference_mode():
                yield _lps_mm(self.voxels(start, min(length, start + self.rows)), self.grid.input).numpy()


def _lps_mm(u: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Input-voxel field rows ``(1, nd, rows, ...)`` -> LPS mm vectors last ``(rows, ..., nd)``."""
    return voxels_to_physical(u, geometry)[0].movedim(0, -1)


@dataclass
class AugmentedCase:
    """One sample: ``image`` and ``labels`` on the input grid (input pixel types), the pull displacement
    ``field`` on the input grid ``geometry`` (LPS mm, by row blocks), and quality ``metrics``."""

    image: sitk.Image
    labels: sitk.Image | None
    field: InputField
    metrics: dict
    preview: dict

    @property
    def geometry(self) -> Geometry:
        """The input grid (the field's)."""
        return self.field.grid.input


def _array(image: sitk.Image) -> torch.Tensor:
    """The image's voxels as a float32 tensor of its own (a copy: the caller may overwrite it)."""
    return torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))


def _label_array(image: sitk.Image) -> torch.Tensor:
    """Label map as uint8 (values up to 255) or int32, not int64: a full-size label map stays small."""
    array = sitk.GetArrayFromImage(image)
    return torch.from_numpy(array if array.dtype == np.uint8 else array.astype(np.int32))


def _pixel_dtype(like: sitk.Image) -> np.dtype:
    return sitk.GetArrayViewFromImage(like).dtype


def _into_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in ``dtype``: floats rounded and clipped into an integer type's range (in place:
    ``values`` is scratch)."""
    if np.issubdtype(dtype, np.integer) and values.dtype.kind == "f":
        info = np.iinfo(dtype)
        np.rint(values, out=values)
        np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype, copy=False)


def _as_image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """SimpleITK image of ``array`` with ``like``'s pixel type and geometry."""
    out = sitk.GetImageFromArray(_into_dtype(array, _pixel_dtype(like)))
    if out.GetPixelID() != like.GetPixelID():
        out = sitk.Cast(out, like.GetPixelID())
    Geometry.of(like).apply_to(out)
    return out


def generate(image: sitk.Image, labels: Labels | None, model: LoadedModel | None, samples: int, depth: int,
             seed: int, device: torch.device = torch.device("cpu"), recovery: str = "published",
             size: int | None = None, progress: Progress | None = None,
             precision: str = "auto") -> Iterator[AugmentedCase]:
    """Deform ``image`` (and ``labels``) ``samples`` times at diffusion depth ``depth``.

    Checks the settings and samples all fields at once (one batch on the working grid), then returns
    an iterator that warps the full-resolution input one sample at a time: write or keep each case
    as it comes, so that memory does not grow with ``samples``.

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
    working = to_working(normalise_(_array(image)[None, None]), grid).to(device)
    generator = torch.Generator(device).manual_seed(int(seed))
    settings = RecoverySettings(recovery, model.meta.compose_padding if model else "border",
                                autocast=recovery_dtype(precision, device))

    split = 0.9 if model else 0.1  # where the progress bar passes from sampling to warping and writing

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, text)

    def step(done: int, total: int) -> None:
        report(0.05 + (split - 0.05) * done / total, f"recovery step {done}/{total}")

    report(0.02, "sampling deformations")
    with torch.inference_mode():
        ws = sample_fields(working, samples, depth, model.net if model else None, schedule, settings, generator, step)
        composed = ws.composed.float().cpu()
    if not bool(torch.isfinite(composed).all()):
        raise DRDMError("the sampled deformation field is not finite (NaN/inf); rerun with --precision fp32 "
                        "or check the model")
    label_tensor = _label_array(labels.image) if labels is not None else None

    source = sitk.GetArrayViewFromImage(image)

    def warped(k: int) -> AugmentedCase:
        with torch.inference_mode():
            case = _apply(source, label_tensor, composed[k:k + 1], grid, image, labels)
        report(split + (1 - split) * (k + 0.5) / samples, f"sample {k + 1}/{samples} warped")
        return case

    def cases() -> Iterator[AugmentedCase]:
        """One case at a time; "done" once the caller asks for the next (it has written this one). The
        frame holds no case between yields."""
        for k in range(samples):
            yield warped(k)
            report(split + (1 - split) * (k + 1) / samples, f"sample {k + 1}/{samples} done")

    return cases()


def _apply(source: np.ndarray, label_tensor: torch.Tensor | None, working_field: torch.Tensor, grid: WorkingGrid,
           image: sitk.Image, labels: Labels | None) -> AugmentedCase:
    """Map one working-grid field onto the input grid and warp the full-resolution image and labels.

    ``source`` is the input's voxel array (any pixel type, not copied): each output slab reads only
    the input rows its positions reach, converted to float there, and is stored in the input's pixel
    type at once. Held at full size: the output image and labels, never a float copy or the field."""
    geometry = grid.input
    shape = geometry.shape
    rows = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    field = InputField(working_field, grid, rows)
    out = np.empty(shape, _pixel_dtype(image))
    warper = LabelWarper(label_tensor) if label_tensor is not None else None
    stride = sample_stride(int(np.prod(shape)))
    slab_voxels = int(np.prod(shape[1:]))
    norms = []
    centre = shape[0] // 2 if geometry.ndims == 3 else None
    for start, stop, u, pos in slab_positions(shape, field.voxels, rows):
        lo, hi = source_rows(pos, shape[0])
        band = torch.from_numpy(source[lo:hi].astype(np.float32))[None, None]
        out[start:stop] = _into_dtype(sample_rows(band, pos, "bilinear", lo)[0, 0].numpy(), out.dtype)
        norms.append(strided_norms(_lps_mm(u, geometry), start * slab_voxels, stride))
        if centre is None:
            u_slice = u[0]
        elif start <= centre < stop:
            u_slice = u[0, 1:, centre - start]
        if warper is not None:
            warper.add_slab(start, stop, pos)
    metrics = {**folding(working_field), **displacement_stats(torch.cat(norms))}
    out_labels = None
    if warper is not None:
        warped = warper.result()
        metrics.update(label_agreement(label_tensor, warped, labels.names))
        out_labels = _as_image(warped.numpy(), labels.image)
    pick = (lambda a: np.array(a)) if centre is None else (lambda a: np.array(a[centre]))
    preview = {"before": pick(source).astype(np.float32), "after": pick(out).astype(np.float32),
               "u_voxels": u_slice.numpy(),
               "spacing": tuple(reversed(geometry.spacing))[-2:],
               "labels_before": None if label_tensor is None else pick(label_tensor.numpy()),
               "labels_after": None if out_labels is None else pick(sitk.GetArrayViewFromImage(out_labels))}
    return AugmentedCase(_as_image(out, image), out_labels, field, metrics, preview)
