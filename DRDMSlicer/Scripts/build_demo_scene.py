"""Build the DRDMSlicer demo scene: the chest CT and segmentation bundled with slicerio, N DRDM samples
with grid transforms, saved as a ``.mrml`` scene plus data files.

Plain Python with the slicer-core wheel::

    PYTHONPATH=DRDMSlicer:. python DRDMSlicer/Scripts/build_demo_scene.py --out demo --samples 3

In Slicer: ``Slicer --no-main-window --python-script build_demo_scene.py --out demo`` (DRDMSlicer installed).
Open ``demo/DRDM_demo.mrml`` in Slicer to browse the samples with their grids.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import slicer
import slicerio

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from DRDMSlicerLib import DRDMLogic  # noqa: E402


def sceneForScript():
    """Slicer's scene inside the application, else a new scene registered as ``slicer.mrmlScene``."""
    if getattr(slicer, "app", None) is not None:
        return slicer.mrmlScene
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
    return scene


def readInputs(scene):
    """The bundled chest CT (128x128x34, 3.05x3.05x10 mm) and its 7-segment segmentation."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CTChest")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(slicerio.get_testdata_file("CTChest4.nrrd"))
    if not storage.ReadData(volume):
        raise RuntimeError("cannot read the bundled CTChest4.nrrd")
    volume.CreateDefaultDisplayNodes()
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(1400, -300)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CTChest_segmentation")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    if not storage.ReadData(segmentation):
        raise RuntimeError("cannot read the bundled Segmentation.seg.nrrd")
    segmentation.CreateDefaultDisplayNodes()
    return volume, segmentation


def saveScene(scene, folder: Path, name: str = "DRDM_demo.mrml") -> Path:
    """Write every storable node next to the scene file and commit the ``.mrml``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
        if node.GetHideFromEditors() or not node.GetSaveWithScene():
            continue
        node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        if storage is None:
            continue
        extension = storage.GetDefaultWriteFileExtension()
        storage.SetFileName(str(folder / f"{node.GetName()}.{extension}"))
        if not storage.WriteData(node):
            raise RuntimeError(f"could not write {storage.GetFileName()}")
    path = folder / name
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(path))
    if not scene.Commit():
        raise RuntimeError(f"could not write the scene {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the scene and its data")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default=None, help="checkpoint path, 'none' (diffusion only) or omit (bundled)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"build_demo_scene: error: {args.out} is not empty", file=sys.stderr)
        return 2
    scene = sceneForScript()
    volume, segmentation = readInputs(scene)
    started = time.monotonic()

    def report(fraction: float, text: str) -> None:
        print(f"\r{100 * fraction:5.1f}% {text:60.60s}", end="", flush=True)

    results = DRDMLogic().generate(volume, segmentation, samples=args.samples, depth=args.depth, seed=args.seed,
                                   model=args.model, device=args.device, progress=report)
    print(f"\n{len(results)} samples in {time.monotonic() - started:.1f} s")
    for result in results:
        m = result.metrics
        print(f"{result.volumeNode.GetName()}: folding {100 * m.get('folding_fraction', float('nan')):.2f} %, "
              f"mean |u| {m.get('displacement_mean_mm', float('nan')):.2f} mm")
    print(f"scene: {saveScene(scene, args.out)}")
    return 0


if __name__ == "__main__":
    code = main()
    if getattr(slicer, "app", None) is not None:
        slicer.util.exit(code)
    sys.exit(code)
