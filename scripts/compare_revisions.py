"""Run two source trees of the engine on the same inputs and compare what they write, file by file.

For a change that must not change outputs (a redesign): single images (the bundled chest CT with its
segmentation, a 2D image with the bundled 2D model, a one-slice 3D NIfTI with a label map), datasets
(nnU-Net with copied originals, a folder with a label pattern, registration pairs), the pipeline
transforms (MONAI and TorchIO) and the Slicer logic through real MRML (slicer-core). Every written file
must be byte-identical, except the manifests: their schema may change, so their per-sample quality
figures and file names are compared instead.

    python scripts/compare_revisions.py OLD_TREE NEW_TREE [--work DIR] [--keep]

``OLD_TREE`` is e.g. a ``git worktree add ../old <commit>``; both trees run with this Python, each on
``PYTHONPATH``. Exit code 0 when everything matches.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ("manifest.json", "drdm_manifest.json")
SMALL = ["--depth", "24", "--seed", "5"]

TRANSFORMS = """
import sys, numpy as np, torch
from monai.transforms import Compose
from drdm_engine.transforms.monai import RandDRDMd
from drdm_engine.transforms.torchio import RandomDRDM
import torchio as tio
rng = np.random.default_rng(0)
image = rng.normal(size=(1, 24, 20, 16)).astype(np.float32)
label = (rng.random((1, 24, 20, 16)) > 0.7).astype(np.int64) * 3
t = RandDRDMd(keys="image", label_keys="label", prob=1.0, depth=(10, 20), size=16)
t.set_random_state(7)
d = t({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
torch.manual_seed(3)
s = tio.Subject(img=tio.ScalarImage(tensor=torch.from_numpy(image)), seg=tio.LabelMap(tensor=torch.from_numpy(label)))
o = RandomDRDM(depth=(10, 20), size=16)(s)
np.savez(sys.argv[1], monai_image=d["image"].numpy(), monai_label=d["label"].numpy(),
         torchio_image=o["img"].data.numpy(), torchio_label=o["seg"].data.numpy())
"""

SLICER = """
import sys, numpy as np, SimpleITK as sitk, slicer
sys.path[:0] = [sys.argv[2] + "/DRDMSlicer", sys.argv[2] + "/Testing"]
from conftest import blobImage
from helpers import addSegmentation, loadVolume
from DRDMSlicerLib import DRDMLogic
scene = slicer.vtkMRMLScene(); slicer.mrmlScene = scene
slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
image = blobImage(); sitk.WriteImage(image, sys.argv[3])
volume = loadVolume(scene, sys.argv[3])
array = sitk.GetArrayFromImage(image)
segmentation = addSegmentation(scene, volume, [("core", "Core", (0.9, 0.1, 0.1), (array > 700).astype(np.uint8))])
results = DRDMLogic(pythonExecutable=sys.executable).generate(volume, segmentation, samples=2, depth=8, seed=3,
                                                              model="none")
np.savez(sys.argv[1], **{f"volume{k}": slicer.util.arrayFromVolume(r.volumeNode) for k, r in enumerate(results)},
         **{f"grid{k}": slicer.util.arrayFromGridTransform(r.transformNode) for k, r in enumerate(results)})
"""


def make_inputs(folder: Path) -> dict[str, Path]:
    """Small real inputs: a 2D image, a one-slice 3D NIfTI with labels, an nnU-Net dataset, a labelled folder."""
    sys.path.insert(0, str(ROOT / "Testing"))
    from dataset_fixtures import build_nnunet, chest_case

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    image2d = sitk.GetImageFromArray(rng.normal(100, 20, (64, 56)).astype(np.float32))
    image2d.SetSpacing((1.2, 0.9))
    sitk.WriteImage(image2d, str(folder / "slice2d.nrrd"))
    ct, seg = chest_case(1)
    flat, flat_labels = ct[:, :, 8:9], seg[:, :, 8:9]
    sitk.WriteImage(flat, str(folder / "flat.nii.gz"))
    sitk.WriteImage(flat_labels, str(folder / "flat_labels.nii.gz"))
    build_nnunet(folder / "Dataset001_Chest", cases=2)
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    for o in range(2):
        ct, seg = chest_case(o)
        sitk.WriteImage(ct, str(folder / f"images/p{o}.nrrd"))
        sitk.WriteImage(seg, str(folder / f"masks/p{o}_seg.nii.gz"))
    return {"folder": folder}


def runs(inputs: Path) -> dict[str, list[str]]:
    """Name -> ``drdm`` arguments (without ``--out``)."""
    return {
        "chest": ["augment", "--samples", "2", *SMALL],
        "model2d": ["augment", str(inputs / "slice2d.nrrd"), "--model", "cmr2d", "--samples", "2", "--recovery",
                    "from-depth", "--depth", "6", "--seed", "2"],
        "flat": ["augment", str(inputs / "flat.nii.gz"), "--labels", str(inputs / "flat_labels.nii.gz"), "--samples",
                 "2", "--size", "64", *SMALL],
        "nnunet": ["augment", str(inputs / "Dataset001_Chest"), "--samples", "2", "--copy-originals", "--size", "32",
                   *SMALL],
        "folder": ["augment", str(inputs / "images"), "--labels-dir", str(inputs / "masks"), "--labels-pattern",
                   "{case}_seg.nii.gz", "--samples", "2", "--size", "32", *SMALL],
        "pairs": ["augment", str(inputs / "images"), "--labels-dir", str(inputs / "masks"), "--labels-pattern",
                  "{case}_seg.nii.gz", "--pairs", "--samples", "3", "--size", "32", *SMALL],
    }


def run_tree(tree: Path, out: Path, inputs: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    for name, args in runs(inputs).items():
        done = subprocess.run([sys.executable, "-m", "drdm_engine", *args, "--out", str(out / name)], env=env,
                              capture_output=True, text=True, cwd=tree)
        if done.returncode != 0:
            raise SystemExit(f"{tree}: {name} failed:\n{done.stderr[-3000:]}")
    for name, script, extra in (("transforms", TRANSFORMS, []),
                                ("slicer", SLICER, [str(tree), str(out / "slicer_input.nrrd")])):
        done = subprocess.run([sys.executable, "-c", script, str(out / f"{name}.npz"), *extra], env=env,
                              capture_output=True, text=True, cwd=tree)
        if done.returncode != 0:
            raise SystemExit(f"{tree}: {name} failed:\n{done.stderr[-3000:]}")


def sample_figures(manifest: dict) -> list[tuple]:
    """(file names, metrics) of every sample in a manifest of either schema, in order."""
    if "cases" in manifest:
        samples = [s for case in manifest["cases"] for s in case["samples"]]
    else:
        samples = manifest["samples"]
    found = []
    for sample in samples:
        names = sorted(n for k, v in sample.items() if k not in ("metrics", "index", "id") and v
                       for n in (v if isinstance(v, list) else [v]))
        found.append((names, json.dumps(sample["metrics"], sort_keys=True)))
    return found


def compare(old: Path, new: Path) -> list[str]:
    problems = []
    old_files = {p.relative_to(old) for p in old.rglob("*") if p.is_file() and ".drdm_state" not in p.parts}
    new_files = {p.relative_to(new) for p in new.rglob("*") if p.is_file() and ".drdm_state" not in p.parts}
    for path in sorted(old_files ^ new_files):
        problems.append(f"only in {'old' if path in old_files else 'new'}: {path}")
    for path in sorted(old_files & new_files):
        a, b = old / path, new / path
        if path.name in MANIFESTS:
            if sample_figures(json.loads(a.read_text())) != sample_figures(json.loads(b.read_text())):
                problems.append(f"manifest figures differ: {path}")
        elif path.suffix == ".npz":
            with np.load(a) as x, np.load(b) as y:
                if sorted(x.files) != sorted(y.files) or any(not np.array_equal(x[k], y[k]) for k in x.files):
                    problems.append(f"arrays differ: {path}")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"bytes differ: {path}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="drdm_compare_"))
    try:
        make_inputs(work / "inputs")
        for label, tree in (("old", args.old), ("new", args.new)):
            run_tree(tree.resolve(), work / label, work / "inputs")
        problems = compare(work / "old", work / "new")
        count = sum(1 for p in (work / "old").rglob("*") if p.is_file())
        print("\n".join(problems) if problems else f"identical: {count} files compared")
        return 1 if problems else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
