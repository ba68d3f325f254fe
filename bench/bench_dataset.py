"""Cost of ``drdm augment`` over a 100-case nnU-Net dataset (small cases: the bundled chest CT subsampled),
with 1 and 2 worker processes, against the in-run baseline of one ``drdm augment`` process per case
(timed on the first ``--baseline-cases`` cases and scaled to the dataset).

    PYTHONPATH=.:bench OMP_WAIT_POLICY=PASSIVE python bench/bench_dataset.py [--cases 100] [--shrink 4] [--samples 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
from timing import machine

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, cases: int, shrink: int) -> Path:
    """nnU-Net raw dataset of ``cases`` chest CT cases (one channel + labels), subsampled ``shrink`` x
    ``shrink`` x ``max(1, shrink // 2)`` from four different offsets."""
    import slicerio

    ct = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))
    seg = sitk.ReadImage(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    z = max(1, shrink // 2)
    for c in range(cases):
        o = c % min(4, shrink)
        sitk.WriteImage(sitk.Cast(ct[o::shrink, o::shrink, ::z], sitk.sitkInt16), str(root / f"imagesTr/case{c:03d}_0000.nii.gz"))
        sitk.WriteImage(seg[o::shrink, o::shrink, ::z], str(root / f"labelsTr/case{c:03d}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                   "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


def drdm(*args: str) -> float:
    """Wall-clock seconds of one ``drdm augment`` process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "drdm_engine.cli", "augment", *args, "--progress-lines"], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--shrink", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="working grid side (diffusion only)")
    parser.add_argument("--baseline-cases", type=int, default=10)
    args = parser.parse_args()
    common = ["--samples", str(args.samples), "--model", "none", "--size", str(args.size), "--seed", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        data = build(Path(tmp) / "Dataset900_Chest", args.cases, args.shrink)
        size = sitk.ReadImage(str(data / "imagesTr/case000_0000.nii.gz")).GetSize()
        print(f"# {args.cases} cases of {size[0]}x{size[1]}x{size[2]} voxels, {args.samples} samples each, "
              f"working grid {args.size}; {machine()}")
        baseline = 0.0
        for c in range(args.baseline_cases):
            baseline += drdm(str(data / f"imagesTr/case{c:03d}_0000.nii.gz"), "--labels",
                             str(data / f"labelsTr/case{c:03d}.nii.gz"), "--out", f"{tmp}/single{c}", *common)
        baseline *= args.cases / args.baseline_cases
        print(f"one process per case (first {args.baseline_cases}, scaled): {baseline:8.1f} s")
        for workers in (1, 2):
            seconds = drdm(str(data), "--out", f"{tmp}/w{workers}", "--workers", str(workers), *common)
            print(f"dataset mode, --workers {workers}: {seconds:8.1f} s  ({seconds / args.cases:.3f} s per case, "
                  f"x{baseline / seconds:.2f} vs one process per case)")
        print(f"# load after: {machine()}")


if __name__ == "__main__":
    main()
