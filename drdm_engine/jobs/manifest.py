"""The one manifest of a ``drdm augment`` run (schema ``drdm-manifest`` version 2), written last: what
was run (inputs, model, settings, seeds, versions), the conventions of the files, and per case its
seed, its samples' files and quality figures, its originals and its registration pairs. For a dataset
also ``dataset.json`` (nnU-Net) and ``pairs.json`` (a MONAI datalist). Deterministic except
``created`` and ``timing``."""
from __future__ import annotations

import os
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.version import VERSION
from ..io.write import write_json
from ..model.checkpoint import LoadedModel, describe
from .cases import Dataset
from .layout import DATASET_JSON, PAIRS, DatasetLayout, Layout
from .settings import Job

SCHEMA = "drdm-manifest"
SCHEMA_VERSION = 2
MODE_NOTES = {"drdm": "fields recovered by the DRDM network",
              "diffusion-only": "no trained model: each field is the random forward diffusion field at the given "
                                "depth, without recovery (plausibility not enforced)"}
CONVENTIONS = {"field": "ITK displacement field, vectors in LPS millimetres on the case's grid, resampling (pull) "
                        "direction: output(x) = input(x + u(x))",
               "labels": "label-safe warp (one-hot linear then argmax); no new label values; a segment the argmax "
                         "would lose is kept at its voxel of highest warped probability and listed in the sample's "
                         "metrics.restored_segments",
               "channels": "every channel of a case is warped with the same field"}


def _inputs(dataset: Dataset, layout: Layout) -> dict:
    if isinstance(layout, DatasetLayout):
        return {"dataset": os.path.abspath(dataset.root), "kind": dataset.kind, "cases": len(dataset.cases)}
    case = dataset.cases[0]
    return {"image": os.path.abspath(case.channels[0]), "labels": os.path.abspath(case.labels) if case.labels else None}


def build_manifest(dataset: Dataset, layout: Layout, job: Job, model: LoadedModel | None, run: dict,
                   records: list[dict], seconds: float, case_seconds: dict[str, float]) -> dict:
    """The manifest of a finished run. ``run``: facts of this run beyond ``job`` (device, network
    precision)."""
    mode = "drdm" if model is not None else "diffusion-only"
    samples = sum(len(r["samples"]) for r in records)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "tool": "drdm augment",
        "engine_version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "mode_note": MODE_NOTES[mode],
        "inputs": _inputs(dataset, layout),
        "model": None if model is None else {"path": model.path, "description": describe(model.meta),
                                             "meta": asdict(model.meta)},
        "settings": {**job.signature(), **run},
        "seeds": layout.seeds,
        "conventions": CONVENTIONS,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "SimpleITK": sitk.Version_VersionString()},
        "totals": {"cases": len(records), "samples": samples,
                   "originals_copied": sum(1 for r in records if r.get("originals"))},
        "cases": records,
        "timing": {"seconds": round(seconds, 3),
                   "case_seconds": {k: round(v, 3) for k, v in sorted(case_seconds.items())}},
    }


def write_manifest(folder: Path, manifest: dict, dataset: Dataset, layout: Layout, job: Job) -> None:
    """Write the manifest into ``folder`` (the run's staging folder), with ``dataset.json`` of an nnU-Net
    output and ``pairs.json`` when the run made pairs."""
    write_json(manifest, folder / layout.manifest)
    totals = manifest["totals"]
    if dataset.kind == "nnunet":
        write_json({**dataset.dataset_json, "numTraining": totals["samples"] + totals["originals_copied"]},
                   folder / DATASET_JSON)
    if job.pairs:
        pairs = [p for r in manifest["cases"] for p in r["pairs"]]
        write_json({"description": "DRDM registration pairs: resampling moving_image with displacement_field "
                                   "(ITK, LPS mm, pull) gives fixed_image; paths relative to this file",
                    "training": pairs}, folder / PAIRS)
