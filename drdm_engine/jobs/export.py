"""Writing an augmentation run to disk: per-sample image, labels, displacement field, preview, and one
``manifest.json`` (written last), into the run's staging folder (:mod:`runfolder`)."""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..core.errors import DRDMError
from ..io.formats import stem_of, suffix_of
from ..io.preview import render_preview
from ..io.read import Labels
from ..io.write import FIELD_COMPRESSION_DEFAULT, write_displacement_field, write_image, write_json, write_segmentation
from ..model.checkpoint import LoadedModel, describe
from ..warp.case import AugmentedCase

MANIFEST = "manifest.json"


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write (disk full, quota, I/O error) into one line that says how much room is left."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        free = shutil.disk_usage(path.parent).free / 2 ** 20
        raise DRDMError(f"cannot write {path.name}: {reason} ({free:.0f} MiB free on that disk); free some space "
                        f"or choose another --out (nothing of this run was kept)") from exc


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


def _sample_index(image_path: str, labels_path: str | None) -> Callable[[str], int | None]:
    """The sample index of a file name that runs on this image (and labels) write, whatever their
    sample count; ``None`` for any other name."""
    seg_nrrd = labels_path is not None and suffix_of(labels_path) == ".seg.nrrd"
    first = sample_names(image_path, 0, labels_path is not None, seg_nrrd)
    base = f"{stem_of(image_path)}_drdm_"
    tails = {name[len(base) + 3:] for name in first.values() if name}

    def index_of(name: str) -> int | None:
        index, tail = name[len(base):len(base) + 3], name[len(base) + 3:]
        return int(index) if name.startswith(base) and index.isdigit() and tail in tails else None

    return index_of


def output_matcher(image_path: str, samples: int, labels_path: str | None) -> Callable[[str], bool]:
    """Predicate: is a file name one this run writes (any sample's file, or the manifest)?"""
    index_of = _sample_index(image_path, labels_path)

    def is_output(name: str) -> bool:
        index = index_of(name)
        return name == MANIFEST or (index is not None and index < samples)

    return is_output


def earlier_samples(out: Path, image_path: str, samples: int, labels_path: str | None) -> list[str]:
    """Sample files in ``out`` that an earlier run on this image wrote beyond this run's ``samples``
    (``--overwrite`` replaces same-named files only; these stay, and the manifest does not list them)."""
    index_of = _sample_index(image_path, labels_path)
    indices = {p.name: index_of(p.name) for p in out.iterdir()}
    return sorted(name for name, index in indices.items() if index is not None and index >= samples)


def write_run(out: Path, image_path: str, labels_path: str | None, labels: Labels | None,
              cases: Iterable[AugmentedCase], model: LoadedModel | None, settings: dict,
              started: float | None = None, field_compression: int = FIELD_COMPRESSION_DEFAULT) -> dict:
    """Write every sample as it comes and then the manifest into ``out`` (the run's own staging
    folder); returns the manifest. ``started`` (``time.perf_counter()`` when the run began) adds the
    run's ``seconds`` to the settings. ``field_compression``: gzip level of the fields (0: none)."""
    seg_nrrd = labels is not None and labels.segmentation is not None
    colours = ({int(s["labelValue"]): tuple(s["color"]) for s in labels.segmentation["segments"] if s.get("color")}
               if seg_nrrd else None)
    entries = []
    for k, case in enumerate(cases):
        names = sample_names(image_path, k, labels is not None, seg_nrrd)
        with _writing(out / names["image"]):
            write_image(case.image, out / names["image"])
        if case.labels is not None:
            with _writing(out / names["labels"]):
                if seg_nrrd:
                    write_segmentation(case.labels, labels, out / names["labels"])
                else:
                    write_image(case.labels, out / names["labels"])
        with _writing(out / names["field"]):
            write_displacement_field(case.field.lps_mm(), case.geometry, out / names["field"], field_compression)
        p = case.preview
        with _writing(out / names["preview"]):
            render_preview(p["before"], p["after"], p["u_voxels"], p["spacing"], out / names["preview"],
                           p["labels_before"], p["labels_after"], colours, title=f"sample {k}")
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
                        "labels": "label-safe warp (one-hot linear then argmax); no new label values; a segment the "
                                  "argmax would lose is kept at its voxel of highest warped probability and listed "
                                  "in the sample's metrics.restored_segments"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "SimpleITK": sitk.Version_VersionString()},
        "samples": entries,
    }
    with _writing(out / MANIFEST):
        write_json(manifest, out / MANIFEST)
    return manifest
