"""``drdm augment`` over a dataset: every case deformed ``samples`` times, written in the input's
layout with new case IDs, one manifest for the dataset; optionally registration pairs.

- Seeds: each case's seed is a stable hash of the run seed and the case ID, so a case's samples do
  not depend on which other cases are in the run, in which order, or on how many processes run.
- Resumable: a case is staged in ``.drdm_state/staging/<case>/``, moved into place file by file
  (atomic renames) and then recorded in ``.drdm_state/cases/<case>.json``; a rerun of the same
  command skips recorded cases and redoes (overwrites) any other case's files, which only this
  run's earlier attempt can have written.
Running a job (new or resumed folder, progress, processes): :mod:`dataset_run`.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..core.errors import DRDMError
from ..core.grid import Geometry
from ..core.pairs import between
from ..io.formats import stem_of, suffix_of
from ..io.read import Labels, read_image, read_labels
from ..io.write import write_displacement_field, write_image, write_json, write_segmentation
from ..model.checkpoint import describe
from ..warp.case import InputField, _apply, generate, resolve_model
from .cases import Case, Dataset

STATE = ".drdm_state"
MANIFEST = "drdm_manifest.json"
PAIRS = "pairs.json"
FIELD_SUFFIX = "_field.nrrd"
WRITE_SUFFIX = {".nhdr": ".nrrd", ".mhd": ".mha"}  # detached-header formats are written as one file

Tick = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    """Settings of a dataset run (those that decide its outputs, plus ``device`` and ``workers``)."""

    samples: int
    depth: int
    seed: int
    model: str | None
    recovery: str
    size: int | None
    precision: str
    pairs: bool = False
    copy_originals: bool = False
    device: str = "auto"
    workers: int = 1

    def signature(self) -> dict:
        """What a resumed run must share with the interrupted one."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "workers")}


def _write_field(field: InputField, path: Path) -> None:
    """One sample's displacement field on its output grid (ITK, LPS mm)."""
    write_displacement_field(field.lps_mm(), field.geometry, path)


def case_seed(seed: int, case_id: str) -> int:
    """Seed of one case: a stable hash (SHA-256) of the run seed and the case ID, in ``[0, 2^63)``."""
    digest = hashlib.sha256(f"{int(seed)}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_id(case_id: str, index: int) -> str:
    """New case ID of sample ``index`` of ``case_id``."""
    return f"{case_id}_drdm{index:03d}"


class Layout:
    """Where a case's files go in the output, relative to its root: nnU-Net (``imagesTr/<id>_0000<ending>``,
    ``labelsTr/<id><ending>``, fields in ``drdm_fields/``) or plain files (``images/``, ``labels/``,
    ``fields/``, the input's suffixes)."""

    def __init__(self, dataset: Dataset):
        self.nnunet = dataset.kind == "nnunet"
        self.ending = dataset.file_ending

    def images(self, case: Case, new_id: str) -> list[str]:
        if self.nnunet:
            return [f"imagesTr/{new_id}_{c:04d}{self.ending}" for c in range(len(case.channels))]
        return [f"images/{new_id}{_suffix(case.channels[0])}"]

    def labels(self, case: Case, new_id: str) -> str | None:
        if case.labels is None:
            return None
        return f"labelsTr/{new_id}{self.ending}" if self.nnunet else f"labels/{new_id}{_suffix(case.labels)}"

    def field(self, new_id: str) -> str:
        return f"{'drdm_fields' if self.nnunet else 'fields'}/{new_id}{FIELD_SUFFIX}"

    def pair_field(self, moving: str, fixed: str) -> str:
        return f"pair_fields/{fixed}_from_{moving}{FIELD_SUFFIX}"


def _suffix(path: str) -> str:
    suffix = suffix_of(path)
    return WRITE_SUFFIX.get(suffix, suffix)


class _Models:
    """The model of this process, loaded once per dimension."""

    def __init__(self, job: Job, device: torch.device):
        self.job, self.device, self.loaded = job, device, {}

    def get(self, ndims: int):
        if ndims not in self.loaded:
            self.loaded[ndims] = resolve_model(self.job.model, ndims, self.device)
        return self.loaded[ndims]


def warp_channel(image: sitk.Image, field: InputField) -> sitk.Image:
    """Another channel of the same case warped with the same field (linear, its own pixel type)."""
    return _apply(sitk.GetArrayViewFromImage(image), None, field.working, field.grid, image, None).image


def _read_case(case: Case) -> tuple[list[sitk.Image], Labels | None]:
    images = [read_image(p, pixel_type=None) for p in case.channels]
    for path, image in zip(case.channels[1:], images[1:]):
        if not Geometry.of(image).matches(Geometry.of(images[0])):
            raise DRDMError(f"case {case.id}: channel {path} is not on the grid of {case.channels[0]}; "
                            f"resample the channels onto one grid first")
    return images, read_labels(case.labels, images[0]) if case.labels else None


def _write_labels(image: sitk.Image, labels: Labels, path: Path) -> None:
    if labels.segmentation is not None and path.name.endswith(".seg.nrrd"):
        write_segmentation(image, labels, path)
    else:
        write_image(image, path)


def process_case(case: Case, layout: Layout, job: Job, out: Path, models: _Models, device: torch.device,
                 tick: Tick) -> dict:
    """Deform one case, stage its files, move them into ``out`` and record it; returns its record."""
    images, labels = _read_case(case)
    model = models.get(images[0].GetDimension())
    seed = case_seed(job.seed, case.id)
    stage = out / STATE / "staging" / case.id
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    record: dict = {"id": case.id, "seed": seed, "source": {"images": list(case.channels), "labels": case.labels},
                    "samples": [], "pairs": []}
    try:
        originals = _stage_originals(case, layout, stage) if job.copy_originals or job.pairs else None
        record["originals"] = originals
        working = []
        samples = generate(images[0], labels, model, job.samples, job.depth, seed, device, job.recovery, job.size,
                           None, job.precision)
        for k, sample in enumerate(samples):
            new_id = sample_id(case.id, k)
            names = {"id": new_id, "images": layout.images(case, new_id), "labels": layout.labels(case, new_id),
                     "field": layout.field(new_id)}
            for c, name in enumerate(names["images"]):
                _mkdir_write(write_image, sample.image if c == 0 else warp_channel(images[c], sample.field), stage / name)
            if labels is not None:
                _mkdir_write(lambda img, p: _write_labels(img, labels, p), sample.labels, stage / names["labels"])
            _mkdir_write(_write_field, sample.field, stage / names["field"])
            record["samples"].append({**names, "metrics": sample.metrics})
            if job.pairs:
                working.append(sample.field)
            del sample
            tick("sample")
        if job.pairs:
            record["pairs"] = _stage_pairs(case, record, originals, working, layout, stage)
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_json(record, _record_path(out, case.id))
    return record


def _mkdir_write(writer, value, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(value, path)


def _stage_originals(case: Case, layout: Layout, stage: Path) -> dict:
    """Copy the case's own files (converted only where the suffix changes) under their own case ID."""
    names = {"id": case.id, "images": layout.images(case, case.id), "labels": layout.labels(case, case.id)}
    sources = list(case.channels) + ([case.labels] if case.labels else [])
    for source, name in zip(sources, names["images"] + ([names["labels"]] if case.labels else [])):
        target = stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if suffix_of(source) == suffix_of(name):
            shutil.copyfile(source, target)
        else:
            write_image(sitk.ReadImage(source), target)
    return names


def _stage_pairs(case: Case, record: dict, originals: dict, working: list[InputField], layout: Layout,
                 stage: Path) -> list[dict]:
    """Registration pairs: (original, sample k) with the sample's own field, and (sample k, sample k+1)
    with the field between them (see :mod:`pairs`)."""
    entries = []
    samples = record["samples"]
    for sample in samples:
        entries.append(_pair(originals, sample, sample["field"], "original-deformed", None))
    for k in range(len(samples) - 1):
        a, b = working[k], working[k + 1]
        with torch.inference_mode():
            w, figures = between(a.working, b.working)
        mm = a.grid.spacing  # working voxels are isotropic: voxels -> mm
        field = InputField(w, a.grid, a.rows)
        name = layout.pair_field(samples[k]["id"], samples[k + 1]["id"])
        _mkdir_write(_write_field, field, stage / name)
        errors = {key if key.endswith("fraction") else f"{key}_mm": round(value * (1 if key.endswith("fraction") else mm), 6)
                  for key, value in figures.items()}
        entries.append(_pair(samples[k], samples[k + 1], name, "deformed-deformed", errors))
    return entries


def _pair(moving: dict, fixed: dict, field: str, kind: str, errors: dict | None) -> dict:
    def one(paths: list[str]) -> str | list[str]:
        return paths[0] if len(paths) == 1 else paths

    return {"moving_image": one(moving["images"]), "fixed_image": one(fixed["images"]),
            "moving_label": moving["labels"], "fixed_label": fixed["labels"], "displacement_field": field,
            "moving_id": moving["id"], "fixed_id": fixed["id"], "kind": kind, "errors_mm": errors}


def _publish(stage: Path, out: Path) -> None:
    """Move every staged file to the same relative place in ``out`` (atomic renames, same file system)."""
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        target = out / path.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _record_path(out: Path, case_id: str) -> Path:
    return out / STATE / "cases" / f"{case_id}.json"


def write_manifest(out: Path, dataset: Dataset, job: Job, model, seconds: float, case_seconds: dict) -> dict:
    """The dataset manifest (per case: seed, samples, quality figures, paths), ``dataset.json`` of an
    nnU-Net output, and ``pairs.json`` (MONAI datalist) with pairs. Deterministic except ``created`` and
    ``timing``."""
    records = [json.loads(_record_path(out, c.id).read_text()) for c in dataset.cases]
    samples = sum(len(r["samples"]) for r in records)
    originals = sum(1 for r in records if r.get("originals"))
    manifest = {
        "tool": "drdm augment (dataset)",
        "engine_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "drdm" if model is not None else "diffusion-only",
        "inputs": {"dataset": os.path.abspath(dataset.root), "kind": dataset.kind, "cases": len(dataset.cases)},
        "model": None if model is None else {"path": model.path, "description": describe(model.meta)},
        "settings": job.signature(),
        "seeds": "per case: SHA-256 of '<seed>:<case id>', first 8 bytes little-endian, shifted right by 1",
        "conventions": {"field": "ITK displacement field, LPS mm on the case's grid, resampling (pull) direction: "
                                 "output(x) = input(x + u(x))",
                        "labels": "label-safe warp (one-hot linear then argmax); no new label values",
                        "channels": "every channel of a case is warped with the same field"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "SimpleITK": sitk.Version_VersionString()},
        "totals": {"cases": len(records), "samples": samples, "originals_copied": originals},
        "cases": records,
        "timing": {"seconds": round(seconds, 3), "case_seconds": {k: round(v, 3) for k, v in sorted(case_seconds.items())}},
    }
    write_json(manifest, out / MANIFEST)
    if dataset.kind == "nnunet":
        write_json({**dataset.dataset_json, "numTraining": samples + originals}, out / "dataset.json")
    if job.pairs:
        pairs = [p for r in records for p in r["pairs"]]
        write_json({"description": "DRDM registration pairs: resampling moving_image with displacement_field "
                                   "(ITK, LPS mm, pull) gives fixed_image; paths relative to this file",
                    "training": pairs}, out / PAIRS)
    return manifest


def single_case(image: str, labels: str | None) -> Dataset:
    """One image (and labels) as a dataset of one case."""
    return Dataset(str(Path(image).parent), "files", (Case(stem_of(image), (image,), labels),))
