"""Export generated samples as augmented cases: image ``.nrrd``, segmentation ``.seg.nrrd``,
transform ``.h5`` and a JSON manifest; never overwrites; no Qt."""
from __future__ import annotations

import json
import os
from pathlib import Path

import slicer

from .inputs import writeSegmentation, writeVolume

MANIFEST_STEM = "drdm_slicer_export"  # not the engine's dataset manifest (drdm_manifest.json): another schema


def _writeTransform(transformNode, path: Path) -> None:
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(transformNode):
        raise OSError(f"could not write {path}")


def _freeManifestPath(folder: Path) -> Path:
    path, number = folder / f"{MANIFEST_STEM}.json", 1
    while path.exists():
        number += 1
        path = folder / f"{MANIFEST_STEM}_{number}.json"
    return path


def plannedFiles(results: list, folder: Path) -> list[dict[str, Path | None]]:
    """Target paths per sample: ``image``, ``segmentation`` (or None) and ``transform``."""
    plans = []
    for result in results:
        stem = result.volumeNode.GetName()
        plans.append({"image": folder / f"{stem}.nrrd",
                      "segmentation": folder / f"{stem}.seg.nrrd" if result.segmentationNode else None,
                      "transform": folder / f"{stem}_transform.h5"})
    return plans


def export(results: list, folder) -> Path:
    """Write every result into ``folder`` (created if needed) and return the manifest's path.

    Raises ``FileExistsError`` before writing anything if a target file exists, and ``PermissionError``
    when the folder cannot be written.
    """
    if not results:
        raise ValueError("nothing to export: generate samples first")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"cannot create the export folder {folder}: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"the export folder {folder} is not writable; choose another folder")
    plans = plannedFiles(results, folder)
    targets = [p for plan in plans for p in plan.values() if p is not None]
    if len(set(targets)) != len(targets):
        raise ValueError("two samples have the same name; rename the volumes before exporting")
    existing = [p.name for p in targets if p.exists()]
    if existing:
        raise FileExistsError(f"{folder} already holds {', '.join(existing[:3])}"
                              f"{' ...' if len(existing) > 3 else ''}; choose an empty folder (files are never overwritten)")
    cases = []
    for result, plan in zip(results, plans):
        writeVolume(result.volumeNode, plan["image"])
        if plan["segmentation"] is not None:
            writeSegmentation(result.segmentationNode, plan["segmentation"])
        _writeTransform(result.transformNode, plan["transform"])
        cases.append({"name": result.volumeNode.GetName(),
                      "image": plan["image"].name,
                      "segmentation": plan["segmentation"].name if plan["segmentation"] else None,
                      "transform": plan["transform"].name,
                      "transform_convention": "ITK displacement field, LPS mm; resampling the input "
                                              "with it gives the image",
                      "settings": result.settings,
                      "metrics": result.metrics})
    manifestPath = _freeManifestPath(folder)
    manifestPath.write_text(json.dumps({"generator": "DRDMSlicer", "cases": cases}, indent=2) + "\n")
    return manifestPath
