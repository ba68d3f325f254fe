"""DRDM augmentation of one case in physical space: image (+ labels) in, N deformed cases out.

The volume is mapped onto the cubic working grid (isotropic, aspect kept, padded), DRDM samples
fields there, each field is mapped back onto the input's own grid in millimetres, and the
full-resolution input is warped with it (pull convention ``out(x) = in(x + u(x))``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from ..core.diffusion import DiffusionSchedule
from ..core.errors import DRDMError
from ..core.grid import (Geometry, WorkingGrid, field_to_input_voxels, sample_rows, slab_positions, source_rows,
                         to_working, voxels_to_physical)
from ..core.intensity import normalise_
from ..core.labels import LabelWarper, compact_labels, label_values
from ..core.metrics import displacement_stats, folding, label_agreement, sample_stride, strided_norms
from ..io.read import Labels, is_single_slice
from ..model.checkpoint import LoadedModel, load_checkpoint
from ..model.precision import recovery_dtype
from ..model.registry import DEFAULT_MODEL, resolve_name
from ..model.sampler import RecoverySettings, sample_fields

Progress = Callable[[float, str], None]
DIFFUSION_ONLY_SIZE = {2: 256, 3: 128}
SLAB_VOXELS = 1 << 22
PREVIEW_SIDE = 1024  # largest preview panel side (pixels); bigger slices are shown subsampled
SIZE_RANGE = (8, 1024)
SEED_MAX = 2 ** 64 - 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are
    accepted when PyTorch can run on them; anything else is refused with one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise DRDMError(f"--device {name} is not a device DRDM runs on; use auto, cpu, cuda (or cuda:N) or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DRDMError(f"--device {name} asked for, but PyTorch sees no CUDA GPU; use --device cpu or install a "
                        f"CUDA build")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DRDMError(f"--device {name}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s); use cuda:0…"
                        f"cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DRDMError(f"--device {name} asked for, but PyTorch sees no Apple MPS device; use --device cpu")
    return device


def check_settings(samples: int, seed: int, size: int | None) -> None:
    """Refuse settings no run can use: fewer than 1 sample, a seed outside 0…2**64-1, a working size
    outside :data:`SIZE_RANGE`."""
    if samples < 1:
        raise DRDMError(f"--samples must be at least 1, got {samples}")
    if not 0 <= seed <= SEED_MAX:
        raise DRDMError(f"--seed must be in 0…2**64-1 ({SEED_MAX}), got {seed}")
    if size is not None and not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise DRDMError(f"--size must be in {SIZE_RANGE[0]}…{SIZE_RANGE[1]} (working grid side in voxels), got {size}")


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
    path = resolve_name(model)
    if Path(path).is_dir():
        raise DRDMError(f"--model {model} is a folder; give a checkpoint file (.pt, written by drdm train or "
                        f"drdm import-checkpoint) or a bundled model's name")
    return load_checkpoint(path, ndims=ndims, device=device)


@dataclass
class InputField:
    """One sample's displacement field on the input grid, computed slab by slab on demand from its
    working-grid field (a full-size field is ``nd`` float copies of the image; it is never held).

    ``working``: ``(1, nd, N^nd)`` in working voxels; ``rows``: slab height along array axis 0;
    ``output``: the grid the field is written on when it is not ``grid.input`` (a one-slice 3D input
    deformed in-plane: the 2D field gets a zero z component and the 3D geometry)."""

    working: torch.Tensor
    grid: WorkingGrid
    rows: int
    output: Geometry | None = None

    @property
    def geometry(self) -> Geometry:
        """The grid of the written field."""
        return self.output or self.grid.input

    def voxels(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` in input voxels along each array axis, ``(1, nd, stop - start, ...)``."""
        return field_to_input_voxels(self.working, self.grid, start, stop)

    def lps_mm(self) -> Iterator[np.ndarray]:
        """The field as consecutive row blocks ``(rows, *shape[1:], nd)``: LPS mm, float32, array order."""
        if self.output is not None:
            with torch.inference_mode():
                u = self.voxels(0, self.grid.input.shape[0])
                lifted = torch.zeros((1, 3, 1, *u.shape[2:]), dtype=u.dtype)
                lifted[:, 1:, 0] = u
                yield _lps_mm(lifted, self.output).numpy()
            return
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
        return self.field.geometry


def _array(image: sitk.Image) -> torch.Tensor:
    """The image's voxels as a float32 tensor of its own (a copy: the caller may overwrite it)."""
    return torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))


def _in_plane(image: sitk.Image) -> sitk.Image:
    """The one slice of a one-slice 3D image as a 2D image (in-plane spacing; its position and direction
    are not needed here: the outputs take the 3D image's)."""
    flat = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image)[0])
    flat.SetSpacing(image.GetSpacing()[:2])
    return flat


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


def sample_working(image: sitk.Image, model: LoadedModel | None, samples: int, depth: int, seed: int,
                   device: torch.device = torch.device("cpu"), recovery: str = "published", size: int | None = None,
                   precision: str = "auto", step: Callable[[int, int], None] | None = None,
                   started: Callable[[], None] | None = None) -> tuple[torch.Tensor, WorkingGrid]:
    """Check the settings and sample ``samples`` DRDM fields of ``image`` on its working grid, in one
    batch: ``(samples, nd, N^nd)`` float32 on the CPU, working voxels (see :func:`generate`).
    ``started()`` once the settings are checked; ``step(done, total)`` after each recovery step."""
    check_settings(samples, seed, size)
    geometry = Geometry.of(image)
    nd = geometry.ndims
    schedule = model.meta.schedule if model else DiffusionSchedule()
    if not 0 <= depth < schedule.timesteps:
        raise DRDMError(f"--depth must be in 0…{schedule.timesteps - 1}, got {depth}")
    n = model.meta.size if model else (size or DIFFUSION_ONLY_SIZE[nd])
    grid = WorkingGrid.fit(geometry, n)
    if model is None:  # diffusion only: the random field needs the working grid's size, not the image
        working = torch.zeros((), device=device).expand((1, 1) + (n,) * nd)
    else:
        working = to_working(normalise_(_array(image)[None, None]), grid).to(device)
    generator = torch.Generator(device).manual_seed(int(seed))
    settings = RecoverySettings(recovery, model.meta.compose_padding if model else "border",
                                autocast=recovery_dtype(precision, device))
    if started is not None:
        started()
    with torch.inference_mode():
        ws = sample_fields(working, samples, depth, model.net if model else None, schedule, settings, generator, step)
        composed = ws.composed.float().cpu()
    if not bool(torch.isfinite(torch.stack(composed.aminmax())).all()):  # NaN and inf reach min or max
        raise DRDMError("the sampled deformation field is not finite (NaN/inf); rerun with --precision fp32 "
                        "or check the model")
    return composed, grid


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
    flat = is_single_slice(image)
    plane = _in_plane(image) if flat else image
    split = 0.9 if model else 0.1  # where the progress bar passes from sampling to warping and writing

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, text)

    def step(done: int, total: int) -> None:
        report(0.05 + (split - 0.05) * done / total, f"recovery step {done}/{total}")

    composed, grid = sample_working(plane, model, samples, depth, seed, device, recovery, size, precision, step,
                                    lambda: report(0.02, "sampling deformations"))
    label_tensor = compact_labels(sitk.GetArrayFromImage(labels.image)) if labels is not None else None
    if flat and label_tensor is not None:
        label_tensor = label_tensor[0]
    values = label_values(label_tensor) if label_tensor is not None else None  # once for every sample

    source = sitk.GetArrayViewFromImage(image)  # a view of the caller's image, which outlives the cases
    if flat:
        source = source[0]

    def warped(k: int) -> AugmentedCase:
        with torch.inference_mode():
            case = _apply(source, label_tensor, composed[k:k + 1], grid, image, labels, values)
        report(split + (1 - split) * (k + 0.5) / samples, f"sample {k + 1}/{samples} warped")
        return case

    def cases() -> Iterator[AugmentedCase]:
        """One case at a time; "done" once the caller asks for the next (it has written this one). The
        frame holds no case between yields."""
        for k in range(samples):
            yield warped(k)
            report(split + (1 - split) * (k + 1) / samples, f"sample {k + 1}/{samples} done")

    return cases()


def warp_rows(source: np.ndarray, out: np.ndarray, start: int, stop: int, pos: torch.Tensor) -> None:
    """Fill rows ``start:stop`` of ``out`` with ``source`` (same array shape, any pixel types) sampled
    linearly at input-voxel positions ``pos`` ``(1, nd, stop - start, ...)``: only the source rows the
    positions reach are converted to float, and the result is stored in ``out``'s dtype at once."""
    lo, hi = source_rows(pos, source.shape[0])
    band = torch.from_numpy(source[lo:hi].astype(np.float32))[None, None]
    out[start:stop] = _into_dtype(sample_rows(band, pos, "bilinear", lo)[0, 0].numpy(), out.dtype)


def _apply(source: np.ndarray, label_tensor: torch.Tensor | None, working_field: torch.Tensor, grid: WorkingGrid,
           image: sitk.Image, labels: Labels | None, values: list[int] | None = None) -> AugmentedCase:
    """Map one working-grid field onto the input grid and warp the full-resolution image and labels.

    ``source`` is the input's voxel array on ``grid.input`` (any pixel type, not copied; the in-plane
    slice of a one-slice 3D ``image``): each output slab reads only the input rows its positions
    reach, converted to float there, and is stored in the input's pixel type at once. Held at full
    size: the output image and labels, never a float copy or the field. Outputs take ``image``'s
    (and ``labels``') shape, pixel type and geometry. ``values``: the label values of ``label_tensor``,
    found once for all samples."""
    geometry = grid.input
    shape = geometry.shape
    rows = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    output = Geometry.of(image)
    field = InputField(working_field, grid, rows, output if output.shape != shape else None)
    out = np.empty(shape, _pixel_dtype(image))
    warper = LabelWarper(label_tensor, values=values) if label_tensor is not None else None
    stride = sample_stride(int(np.prod(shape)))
    slab_voxels = int(np.prod(shape[1:]))
    norms = []
    centre = shape[0] // 2 if geometry.ndims == 3 else None
    step = max(1, math.ceil(max(shape[-2:]) / PREVIEW_SIDE))
    u_rows = []
    for start, stop, u, pos in slab_positions(shape, field.voxels, rows):
        warp_rows(source, out, start, stop, pos)
        norms.append(strided_norms(voxels_to_physical(u, geometry)[0], start * slab_voxels, stride))
        if centre is None:
            u_rows.append(u[0, :, (-start) % step::step, ::step])
        elif start <= centre < stop:
            u_rows.append(u[0, 1:, centre - start, ::step, ::step])
        if warper is not None:
            warper.add_slab(start, stop, pos)
    metrics = {**folding(working_field), **displacement_stats(torch.cat(norms))}
    out_labels = warped = None
    if warper is not None:
        warped = warper.result(lambda: ((start, pos) for start, _, _, pos in slab_positions(shape, field.voxels, rows)))
        metrics.update(label_agreement(label_tensor, warped, labels.names, warper.values.tolist()))
        metrics["restored_segments"] = [{**r, "name": labels.names.get(r["value"], str(r["value"]))}
                                        for r in warper.restored]
        out_labels = _as_image(warped.numpy().reshape(output.shape), labels.image)
    pick = (lambda a: np.array(a[::step, ::step])) if centre is None else (lambda a: np.array(a[centre, ::step, ::step]))
    preview = {"before": pick(source).astype(np.float32), "after": pick(out).astype(np.float32),
               "u_voxels": (torch.cat(u_rows, dim=1) / step).numpy(),
               "spacing": tuple(s * step for s in reversed(geometry.spacing))[-2:],
               "labels_before": None if label_tensor is None else pick(label_tensor.numpy()),
               "labels_after": None if warped is None else pick(warped.numpy())}
    return AugmentedCase(_as_image(out.reshape(output.shape), image), out_labels, field, metrics, preview)
