"""One case warped by DRDM samples in physical space: its channel images (and labels) on their own grid,
warped with each sample's field mapped back onto that grid in millimetres (pull convention
``out(x) = in(x + u(x))``), with the sample's quality figures and preview.

A one-slice 3D volume is deformed in-plane: its fields are sampled on the 2D slice and written back in
3D with the volume's full geometry.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from ..core.grid import Geometry, WorkingGrid
from ..core.labels import LabelWarper, compact_labels, label_values
from ..core.metrics import displacement_stats, folding, label_agreement
from ..io.read import Labels, is_single_slice
from ..model.checkpoint import LoadedModel
from .slabs import FieldSink, InputField, PreviewPlan, into_dtype, warp_slabs
from .working import sample_working

Report = Callable[[float, str], None]
"""Progress of one case: ``report(fraction done, text)``."""
SinkFor = Callable[[int, InputField], ContextManager[FieldSink]]
"""Where sample ``k``'s field goes as it is warped: a context that yields the block writer."""


def in_plane(image: sitk.Image) -> sitk.Image:
    """The one slice of a one-slice 3D image as a 2D image (in-plane spacing; its position and direction
    are not needed here: the outputs take the 3D image's)."""
    flat = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image)[0])
    flat.SetSpacing(image.GetSpacing()[:2])
    return flat


def as_image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """SimpleITK image of ``array`` with ``like``'s pixel type and geometry."""
    out = sitk.GetImageFromArray(into_dtype(array, sitk.GetArrayViewFromImage(like).dtype))
    if out.GetPixelID() != like.GetPixelID():
        out = sitk.Cast(out, like.GetPixelID())
    Geometry.of(like).apply_to(out)
    return out


@dataclass
class CaseInput:
    """A case ready for warping: its channel images (the first drives the fields; all on one grid) and
    labels, with what every sample reuses found once: the voxel arrays (views, in-plane for a one-slice
    volume), the compact label tensor and its label values."""

    channels: list[sitk.Image]
    labels: Labels | None
    flat: bool
    sources: list[np.ndarray]
    label_tensor: torch.Tensor | None
    values: list[int] | None

    @classmethod
    def of(cls, channels: list[sitk.Image], labels: Labels | None) -> "CaseInput":
        flat = is_single_slice(channels[0])
        sources = [sitk.GetArrayViewFromImage(c)[0] if flat else sitk.GetArrayViewFromImage(c) for c in channels]
        tensor = compact_labels(sitk.GetArrayFromImage(labels.image)) if labels is not None else None
        if flat and tensor is not None:
            tensor = tensor[0]
        return cls(channels, labels, flat, sources, tensor, label_values(tensor) if tensor is not None else None)

    @property
    def plane(self) -> sitk.Image:
        """The image the fields are sampled from: channel 0 (its in-plane slice for a one-slice volume)."""
        return in_plane(self.channels[0]) if self.flat else self.channels[0]

    def field(self, working: torch.Tensor, grid: WorkingGrid) -> InputField:
        """One sample's working-grid field ``(1, nd, N^nd)`` as a field on this case's grid."""
        return InputField(working, grid, Geometry.of(self.channels[0]) if self.flat else None)


@dataclass
class WarpedSample:
    """One sample of a case: ``images`` (one per channel) and ``labels`` on the input grid (input pixel
    types), quality ``metrics``, the ``preview`` panels' data when asked for, and its ``field``."""

    images: list[sitk.Image]
    labels: sitk.Image | None
    metrics: dict
    preview: dict | None
    field: InputField

    @property
    def image(self) -> sitk.Image:
        """Channel 0."""
        return self.images[0]

    @property
    def geometry(self) -> Geometry:
        """The grid of the written field (the input's)."""
        return self.field.geometry


def warp_sample(case: CaseInput, field: InputField, field_sink: FieldSink | None = None,
                preview: bool = False) -> WarpedSample:
    """Warp every channel and the labels of ``case`` with ``field`` in one pass over the input grid,
    giving the sample's quality figures; ``field_sink`` receives the written field (LPS mm) in the same
    pass. Held at full size: the outputs, never a float copy of an input or the field."""
    shape = field.grid.input.shape
    warper = LabelWarper(case.label_tensor, values=case.values) if case.label_tensor is not None else None
    plan = PreviewPlan.of(shape) if preview else None
    warped = warp_slabs(field, case.sources, [warper] if warper else [], field_sink, figures=True, preview=plan)
    metrics = {**folding(field.working), **displacement_stats(warped.norms)}
    out_labels = labels = None
    if warper is not None:
        names = case.labels.names
        labels = warped.labels[0]
        metrics.update(label_agreement(case.label_tensor, labels, names, warper.values.tolist()))
        metrics["restored_segments"] = [{**r, "name": names.get(r["value"], str(r["value"]))} for r in warper.restored]
        out_labels = as_image(labels.numpy().reshape(Geometry.of(case.labels.image).shape), case.labels.image)
    images = [as_image(out.reshape(Geometry.of(c).shape), c) for out, c in zip(warped.sources, case.channels)]
    panels = None
    if plan is not None:
        spacing = tuple(s * plan.step for s in reversed(field.grid.input.spacing))[-2:]
        panels = {"before": plan.pick(case.sources[0]).astype(np.float32),
                  "after": plan.pick(warped.sources[0]).astype(np.float32), "u_voxels": warped.preview_u,
                  "spacing": spacing,
                  "labels_before": None if labels is None else plan.pick(case.label_tensor.numpy()),
                  "labels_after": None if labels is None else plan.pick(labels.numpy())}
    return WarpedSample(images, out_labels, metrics, panels, field)


def generate_samples(case: CaseInput, model: LoadedModel | None, samples: int, depth: int, seed: int,
                     device: torch.device = torch.device("cpu"), recovery: str = "published", size: int | None = None,
                     precision: str = "auto", report: Report | None = None, previews: bool = False,
                     sinks: SinkFor | None = None) -> Iterator[WarpedSample]:
    """Sample ``samples`` DRDM fields of ``case`` at once (one batch on the working grid, before this
    returns), then warp the full-resolution case one sample at a time as the caller takes them (write or keep each as it
    comes: memory does not grow with ``samples``). ``sinks(k, field)`` receives sample ``k``'s written
    field during its warp. ``model=None`` is diffusion-only; see :func:`.working.sample_working`."""
    split = 0.9 if model else 0.1  # where the case's progress passes from sampling to warping and writing
    report = report or (lambda fraction, text: None)

    def step(done: int, total: int) -> None:
        report(0.05 + (split - 0.05) * done / total, f"recovery step {done}/{total}")

    report(0.02, "sampling deformations")
    composed, grid = sample_working(case.plane, model, samples, depth, seed, device, recovery, size, precision, step)

    def warped() -> Iterator[WarpedSample]:
        """One sample at a time; "done" once the caller asks for the next (it has written this one). The
        frame holds no sample between yields."""
        for k in range(samples):
            field = case.field(composed[k:k + 1], grid)
            with sinks(k, field) if sinks is not None else contextlib.nullcontext() as sink:
                sample = warp_sample(case, field, sink, previews)
            report(split + (1 - split) * (k + 0.5) / samples, f"sample {k + 1}/{samples} warped")
            yield sample
            del sample
            report(split + (1 - split) * (k + 1) / samples, f"sample {k + 1}/{samples} done")

    return warped()


def generate(image: sitk.Image, labels: Labels | None, model: LoadedModel | None, samples: int, depth: int,
             seed: int, device: torch.device = torch.device("cpu"), recovery: str = "published",
             size: int | None = None, progress: Report | None = None,
             precision: str = "auto") -> Iterator[WarpedSample]:
    """Deform ``image`` (and ``labels``) ``samples`` times at diffusion depth ``depth``, in memory, with
    previews (see :func:`generate_samples`). ``precision`` of the recovery network: see
    :func:`..model.precision.recovery_dtype`."""
    return generate_samples(CaseInput.of([image], labels), model, samples, depth, seed, device, recovery, size,
                            precision, progress, previews=True)
