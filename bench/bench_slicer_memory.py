"""Slicer-side memory per generated sample for a large CT (headless, real MRML from slicer-core).

    PYTHONPATH=.:DRDMSlicer python bench/bench_slicer_memory.py [--size 512 512 300] [--samples 2] [--lib DIR]

Writes an engine-like output folder once (int16 CT, 3-segment ``.seg.nrrd``, float32 LPS displacement
field on the CT's grid, a manifest listing the same files ``--samples`` times), then a fresh process
puts the CT and its segmentation in a scene and loads the samples with ``loadResults`` (what Generate
does after the worker): resident memory (MiB) after the inputs, after each sample, and the peak while
loading (RSS polled every 5 ms). ``--lib DIR`` loads with another copy of the module library (``DIR/DRDMSlicerLib``), e.g. an
older commit's (``git archive <commit> DRDMSlicer | tar -x -C OLD``, then ``--lib OLD/DRDMSlicer``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CHILD = """
import json, sys, threading, time
from pathlib import Path
import slicer
sys.path[:0] = [sys.argv[3], "Testing"]
from helpers import loadVolume
from DRDMSlicerLib.results import loadResults

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

folder = Path(sys.argv[1])
scene = slicer.vtkMRMLScene()
slicer.mrmlScene = scene
slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
start = rss()
volume = loadVolume(scene, folder / "ct.nrrd")
volume.SetName("ct")
segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ct_seg")
storage = slicer.vtkMRMLSegmentationStorageNode()
storage.SetFileName(str(folder / "labels.seg.nrrd"))
assert storage.ReadData(segmentation)
inputs = rss()
loadingPeak, loading = [inputs], True

def watch():
    while loading:
        loadingPeak[0] = max(loadingPeak[0], rss())
        time.sleep(0.005)

watcher = threading.Thread(target=watch)
watcher.start()
steps = []
for number in range(int(sys.argv[2])):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["samples"] = manifest["samples"][:1]
    (folder / "one.json").write_text(json.dumps(manifest))
    loadResults(folder / "one.json", volume, segmentation)
    steps.append(rss())
loading = False
watcher.join()
print(json.dumps({"start": start, "inputs": inputs, "samples": steps, "peak": loadingPeak[0]}))
"""


def writeOutputs(folder: Path, size: tuple[int, int, int]) -> None:
    """CT-like int16 volume, its 3-segment ``.seg.nrrd``, and a smooth float32 displacement field (LPS mm)."""
    import slicerio

    i, j, k = size
    zz, yy, xx = np.ogrid[-1:1:complex(0, k), -1:1:complex(0, j), -1:1:complex(0, i)]
    radius = np.sqrt(xx**2 + yy**2 + zz**2)
    labels = (1 * (radius < 0.8) + (radius < 0.5) + (radius < 0.2)).astype(np.uint8)
    ct = sitk.GetImageFromArray((np.array([-1000, 40, 300, 700], np.int16)[labels]))
    ct.SetSpacing((0.7, 0.7, 1.0))
    sitk.WriteImage(ct, str(folder / "ct.nrrd"))
    field = np.empty((k, j, i, 3), np.float32)
    for axis in range(3):
        field[..., axis] = 3.0 * np.sin(np.pi * (xx + 2 * yy + axis * zz))
    image = sitk.GetImageFromArray(field, isVector=True)
    image.CopyInformation(ct)
    sitk.WriteImage(image, str(folder / "field.nrrd"))
    del field, image
    header = {"voxels": np.ascontiguousarray(labels.transpose(2, 1, 0)),
              "ijkToLPS": np.array([[0.7, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]),
              "encoding": "raw",
              "segments": [{"id": f"s{v}", "name": f"S{v}", "labelValue": v, "layer": 0} for v in (1, 2, 3)]}
    slicerio.write_segmentation(str(folder / "labels.seg.nrrd"), header)
    sample = {"index": 0, "image": "ct.nrrd", "labels": "labels.seg.nrrd", "field": "field.nrrd", "metrics": {}}
    (folder / "manifest.json").write_text(json.dumps({"mode": "diffusion-only", "samples": [sample]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--lib", default="DRDMSlicer", help="folder holding the DRDMSlicerLib to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        writeOutputs(Path(folder), tuple(args.size))
        done = subprocess.run([sys.executable, "-c", CHILD, folder, str(args.samples), args.lib],
                              capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.splitlines()[-1])
    steps = [figures["inputs"], *figures["samples"]]
    perSample = [b - a for a, b in zip(steps, steps[1:])]
    print(f"volume {args.size}, library {args.lib}: inputs {figures['inputs'] - figures['start']:.0f} MiB; "
          "per sample " + ", ".join(f"{m:.0f}" for m in perSample) + " MiB; process RSS after inputs "
          f"{figures['inputs']:.0f} MiB, peak while loading the samples {figures['peak']:.0f} MiB")


if __name__ == "__main__":
    main()
