"""Writing an augmentation run to disk: per-sample image, labels, displacement field, preview, and one
``manifest.json``. Never overwrites unless asked; every file is written atomically."""
from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk
import torch

from . import __version__
from .augment import AugmentedCase
from .checkpoint import LoadedModel, describe
from .errors import DRDMError
from .io import Labels, stem_of, suffix_of, write_displacement_field, write_image, write_json, write_segmentation
from .preview import render_preview

MANIFEST = "manifest.json"


def prepare_folder(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse an existing non-empty folder unless ``overwrite``; check it is writable."""
    if out.exists() and not out.is_dir():
        raise DRDMError(f"--out {out} is a file, not a folder; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DRDMError(f"output folder {out} already exists and is not empty; choose another --out or add --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".drdm_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DRDMError(f"cannot write to output folder {out}: {exc.strerror or exc}; choose a writable --out") from exc


def _image_suffix(image_path: str) -> str:
    suffix = suffix_of(image_path)
    return ".nii.gz" if suffix in (".nii", ".nii.gz") else ".nrrd"


def sample_names(image_path: str, index: int, has_labels: bool, seg_nrrd: bool) -> dict[str, str | None]:
    """Relative file names of sample ``index``."""
    base = f"{stem_of(image_path)}_drdm_{index:03d}"
    suffix = _image_suffix(image_path)
    labels = None
    if has_labels:
        labels = f"{base}_labels.seg.nrrd" if seg_nrrd else f"{base}_labels{suffix}"
    return {"image": f"{base}{suffix}", "labels": labels, "field": f"{base}_field.nrrd", "preview": f"{base}_preview.png"}


def write_run(out: Path, image_path: str, labels_path: str | None, labels: Labels | None,
              cases: Iterable[AugmentedCase], model: LoadedModel | None, settings: dict,
              started: float | None = None) -> dict:
    """Write every sample as it comes and then the manifest into ``out`` (already prepared); returns
    the manifest. ``started`` (``time.perf_counter()`` when the run began) adds the run's
    ``seconds`` to the settings."""
    seg_nrrd = labels is not None and labels.segmentation is not None
    colours = {int(s["labelValue"]): tuple(s["color"]) for s in labels.segmentation["segments"]} if seg_nrrd else None
    entries = []
    for k, case in enumerate(cases):
        names = sample_names(image_path, k, labels is not None, seg_nrrd)
        write_image(case.image, out / names["image"])
        if case.labels is not None:
            if seg_nrrd:
                write_segmentation(case.labels, labels, out / names["labels"])
            else:
                write_image(case.labels, out / names["labels"])
        write_displacement_field(case.field.lps_mm(), case.geometry, out / names["field"])
        p = case.preview
        tmp = out / f".tmp{os.getpid()}_{names['preview']}"
        render_preview(p["before"], p["after"], p["u_voxels"], p["spacing"], tmp, p["labels_before"],
                       p["labels_after"], colours, title=f"sample {k}")
        os.replace(tmp, out / names["preview"])
        entries.append({"index": k, **names, "metrics": case.metrics})
        del case  # free this sample before the next one is warped
    manifest = {
        "tool": "drdm augment",
        "engine_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "drdm" if model is not None else "diffusion-only",
        "mode_note": ("fields recovered by the DRDM network" if model is not None else
                      "no trained model: each field is the random forward diffusion field at the given depth, "
                      "without recovery (plausibility not enforced)"),
        "inputs": {"image": os.path.abspath(image_path), "labels": os.path.abspath(labels_path) if labels_path else None},
        "model": None if model is None else {"path": model.path, "description": describe(model.meta),
                                             "meta": asdict(model.meta)},
        "settings": settings if started is None else {**settings, "seconds": round(time.perf_counter() - started, 3)},
        "conventions": {"field": "ITK displacement field, vectors in LPS millimetres on the input grid, resampling "
                                 "(pull) direction: output(x) = input(x + u(x))",
                        "labels": "label-safe warp (one-hot linear then argmax); no new label values"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "SimpleITK": sitk.Version_VersionString()},
        "samples": entries,
    }
    write_json(manifest, out / MANIFEST)
    return manifest


def remove_partial(out: Path, created: bool) -> None:
    """After a failed run: remove the folder if this run created it (it holds only our partial files)."""
    if created and out.is_dir():
        shutil.rmtree(out, ignore_errors=True)
