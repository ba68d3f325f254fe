"""Two `drdm augment` output levers on the bundled chest CT case, each against its in-run baseline:

* the label-safe warp as one ``grid_sample`` over all label indicators (channel chunks) against one
  ``grid_sample`` per label value (the previous path), same positions, outputs compared;
* the displacement field's gzip level (``--field-compression``): time to write and file size per level.

Usage: ``PYTHONPATH=.:bench python bench/bench_augment_io.py [--repeats 5] [--synthetic-labels N]``
(prints one JSON object). ``--synthetic-labels N`` replaces the case's 8 segments by N random
Voronoi regions on the same grid (a many-structure segmentation).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from drdm_engine.cli.augment import default_case
from drdm_engine.core.grid import sample_rows, source_rows
from drdm_engine.core.labels import LabelWarper, compact_labels, label_values
from drdm_engine.io.read import read_image, read_labels
from drdm_engine.io.write import write_displacement_field
from drdm_engine.warp.case import generate


def per_label_warp(labels: torch.Tensor, slabs) -> torch.Tensor:
    """The previous path: one ``grid_sample`` per label value present in each slab's source rows."""
    out = torch.zeros_like(labels)
    values = label_values(labels)
    for start, stop, pos in slabs:
        lo, hi = source_rows(pos, labels.shape[0])
        crop = labels[lo:hi]
        best_score, best = None, torch.zeros(pos.shape[2:], dtype=labels.dtype)
        for value in values:
            indicator = (crop == value).float()[None, None]
            if not bool(indicator.any()):
                continue
            score = sample_rows(indicator, pos, "bilinear", lo)[0, 0]
            take = score > best_score if best_score is not None else torch.ones_like(score, dtype=torch.bool)
            best[take] = value
            best_score = score if best_score is None else torch.where(take, score, best_score)
        out[start:stop] = best
    return out


def one_sample_warp(labels: torch.Tensor, slabs) -> torch.Tensor:
    warper = LabelWarper(labels)
    for start, stop, pos in slabs:
        warper.add_slab(start, stop, pos)
    return warper.out  # before restoration, to compare with the previous path voxel for voxel


def voronoi(shape: tuple[int, ...], count: int) -> torch.Tensor:
    """``count`` random Voronoi regions (values 1…count) filling ``shape``."""
    generator = torch.Generator().manual_seed(0)
    seeds = torch.rand((count, len(shape)), generator=generator) * torch.tensor(shape)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"), -1)
    nearest = torch.cdist(grid.reshape(-1, len(shape)), seeds).argmin(1)
    return (nearest + 1).reshape(shape).to(torch.int32)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--levels", default="0,1,3,6")
    parser.add_argument("--synthetic-labels", type=int, default=0)
    args = parser.parse_args()
    image_path, labels_path = default_case()
    image = read_image(image_path, pixel_type=None, keep_3d=True)
    labels = read_labels(labels_path, image)
    case = next(generate(image, labels, None, 1, 32, 0))
    field = case.field
    with torch.inference_mode():
        slabs = [(slab.start, slab.stop, slab.pos) for slab in field.slabs()]
        label_tensor = compact_labels(sitk.GetArrayFromImage(labels.image))
        if args.synthetic_labels:
            label_tensor = voronoi(label_tensor.shape, args.synthetic_labels)
        times = {"one grid_sample": [], "one per label": []}
        for _ in range(args.repeats):  # interleaved
            t = time.perf_counter()
            new = one_sample_warp(label_tensor, slabs)
            times["one grid_sample"].append(time.perf_counter() - t)
            t = time.perf_counter()
            old = per_label_warp(label_tensor, slabs)
            times["one per label"].append(time.perf_counter() - t)
    label_figure = {k: round(statistics.median(v), 4) for k, v in times.items()}
    label_figure["ratio"] = round(label_figure["one per label"] / label_figure["one grid_sample"], 2)
    label_figure["identical"] = bool(torch.equal(new, old))
    label_figure["labels"] = len(label_values(label_tensor))

    levels = [int(v) for v in args.levels.split(",")]
    writes = {level: [] for level in levels}
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for level in levels:
                path = Path(folder) / f"f{level}.nrrd"
                t = time.perf_counter()
                write_displacement_field(field.lps_mm(), case.geometry, path, level)
                writes[level].append(time.perf_counter() - t)
                sizes[level] = path.stat().st_size
    field_figure = {str(level): {"seconds": round(statistics.median(writes[level]), 4),
                                 "MiB": round(sizes[level] / 2 ** 20, 2)} for level in levels}
    print(json.dumps({"cpu": cpu_model(), "load": os.getloadavg(), "threads": torch.get_num_threads(),
                      "image": list(image.GetSize()), "label_warp": label_figure,
                      "field_write_per_level": field_figure}, indent=1))


if __name__ == "__main__":
    main()
