"""One case of a run: read it, draw its samples, warp them, and write every file into the case's staging
folder (image per channel, labels, field, preview), the copy of its originals and its registration
pairs; returns the case's manifest record."""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import SimpleITK as sitk
import torch

from ..core.errors import DRDMError
from ..core.grid import Geometry
from ..core.pairs import between
from ..io.formats import suffix_of
from ..io.preview import render_preview
from ..io.read import ImageInfo, Labels, read_image, read_labels
from ..io.write import field_writer, write_image, write_segmentation, writing
from ..model.loading import ModelCache
from ..warp.case import CaseInput, WarpedSample, generate_samples
from ..warp.slabs import InputField
from .cases import Case
from .layout import Layout, SampleFiles
from .progress import CaseReport
from .settings import Job


@dataclass(frozen=True)
class CaseInfo:
    """A case's headers, inspected once before the run: one per channel, and the labels'."""

    channels: tuple[ImageInfo, ...]
    labels: ImageInfo | None


def read_case(case: Case, info: CaseInfo, scratch: Path) -> CaseInput:
    """The case's channels (pixel types kept, one-slice volumes kept 3D) and labels, all on channel 0's grid;
    a compressed NIfTI is decompressed for its read into ``scratch`` (the case's staging folder, on the
    output's disk, which the disk guard counts)."""
    images = [read_image(path, pixel_type=None, keep_3d=True, info=i, scratch=scratch)
              for path, i in zip(case.channels, info.channels)]
    for path, image in zip(case.channels[1:], images[1:]):
        if not Geometry.of(image).matches(Geometry.of(images[0])):
            raise DRDMError(f"channel {path} is not on the grid of {case.channels[0]}; resample the channels onto "
                            f"one grid first")
    labels = read_labels(case.labels, images[0], info.labels, scratch) if case.labels else None
    return CaseInput.of(images, labels)


def _write_labels(image: sitk.Image, labels: Labels, path: Path) -> None:
    """A label map, as a Slicer segmentation (names, colours) where the input was one."""
    if labels.segmentation is not None and path.name.endswith(".seg.nrrd"):
        write_segmentation(image, labels, path)
    else:
        write_image(image, path)


def _colours(labels: Labels | None) -> dict[int, tuple] | None:
    if labels is None or labels.segmentation is None:
        return None
    return {int(s["labelValue"]): tuple(s["color"]) for s in labels.segmentation["segments"] if s.get("color")}


def _write_sample(stage: Path, files: SampleFiles, sample: WarpedSample, labels: Labels | None, index: int) -> None:
    for image, name in zip(sample.images, files.images):
        with writing(stage / name):
            write_image(image, _made(stage / name))
    if sample.labels is not None:
        with writing(stage / files.labels):
            _write_labels(sample.labels, labels, _made(stage / files.labels))
    if files.preview:
        p = sample.preview
        with writing(stage / files.preview):
            render_preview(p["before"], p["after"], p["u_voxels"], p["spacing"], stage / files.preview,
                           p["labels_before"], p["labels_after"], _colours(labels), title=f"sample {index}")


def _made(path: Path) -> Path:
    """``path`` with its folder created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _field_sinks(stage: Path, files: Callable[[int], SampleFiles], compression: int):
    @contextlib.contextmanager
    def sink(index: int, field: InputField):
        path = _made(stage / files(index).field)
        with writing(path), field_writer(field.geometry, path, compression) as write:
            yield write

    return sink


def _stage_originals(case: Case, case_input: CaseInput, files: SampleFiles, stage: Path) -> None:
    """The case's own files under its own ID: copied byte for byte where the name keeps their suffix, else
    (a DICOM series, a detached NRRD header) written from the images already read."""
    sources = [*zip(case.channels, case_input.channels)]
    if case.labels:
        sources.append((case.labels, case_input.labels.image))
    for (source, image), name in zip(sources, files.paths()):
        target = _made(stage / name)
        with writing(target):
            if suffix_of(source) == suffix_of(name):
                shutil.copyfile(source, target)
            else:
                write_image(image, target)


def _pair_entry(moving: dict, fixed: dict, field: str, kind: str, errors: dict | None) -> dict:
    def one(paths: list[str]) -> str | list[str]:
        return paths[0] if len(paths) == 1 else paths

    return {"moving_image": one(moving["images"]), "fixed_image": one(fixed["images"]),
            "moving_label": moving["labels"], "fixed_label": fixed["labels"], "displacement_field": field,
            "moving_id": moving["id"], "fixed_id": fixed["id"], "kind": kind, "errors_mm": errors}


def _stage_pairs(original: dict, samples: list[dict], fields: list[InputField], layout: Layout, stage: Path,
                 compression: int) -> list[dict]:
    """Registration pairs: (original, sample k) with the sample's own field, and (sample k, sample k+1)
    with the field between them (see :mod:`..core.pairs`)."""
    entries = [_pair_entry(original, sample, sample["field"], "original-deformed", None) for sample in samples]
    for k in range(len(fields) - 1):
        a, b, first, second = fields[k], fields[k + 1], samples[k], samples[k + 1]
        with torch.inference_mode():
            w, figures = between(a.working, b.working)
        mm = a.grid.spacing  # working voxels are isotropic: voxels -> mm
        name = layout.pair_field(first["id"], second["id"])
        path = _made(stage / name)
        with writing(path), field_writer(a.geometry, path, compression) as write:
            for block in InputField(w, a.grid, a.output).lps_mm():
                write(block)
        errors = {key if key.endswith("fraction") else f"{key}_mm":
                  round(value * (1 if key.endswith("fraction") else mm), 6) for key, value in figures.items()}
        entries.append(_pair_entry(first, second, name, "deformed-deformed", errors))
    return entries


def run_case(case: Case, info: CaseInfo, job: Job, layout: Layout, stage: Path, models: ModelCache,
             device: torch.device, report: CaseReport) -> dict:
    """Deform one case into ``stage`` (its files at their relative places in the output); returns its
    manifest record."""
    case_input = read_case(case, info, stage)
    model = models.get(info.channels[0].ndims)
    seed = layout.seed(job.seed, case.id)
    record: dict = {"id": case.id, "seed": seed, "source": {"images": list(case.channels), "labels": case.labels},
                    "working_size": None, "samples": [], "pairs": [], "originals": None}
    original = layout.original(case) if job.originals else None
    if original is not None:
        _stage_originals(case, case_input, original, stage)
        record["originals"] = original.entry()
    sinks = _field_sinks(stage, lambda k: layout.sample(case, k), job.field_compression)
    samples = generate_samples(case_input, model, job.samples, job.depth, seed, device, job.recovery, job.size,
                               job.precision, report, layout.previews, sinks)
    fields = []
    for k, sample in enumerate(samples):
        files = layout.sample(case, k)
        _write_sample(stage, files, sample, case_input.labels, k)
        record["samples"].append({"index": k, **files.entry(), "metrics": sample.metrics})
        record["working_size"] = sample.field.grid.size
        if job.pairs:
            fields.append(sample.field)
        del sample
    if job.pairs:
        record["pairs"] = _stage_pairs(record["originals"], record["samples"], fields, layout, stage,
                                       job.field_compression)
    return record
