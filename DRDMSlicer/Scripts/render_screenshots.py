"""Render the README picture: an axial slice of a deformed chest CT with its displacement grid as Slicer
draws it (the panel itself can only be captured in the Slicer application).

    PYTHONPATH=DRDMSlicer:. python DRDMSlicer/Scripts/render_screenshots.py --out DRDMSlicer/Resources/Screenshots \
        [--scene demo/DRDM_demo.mrml]

With ``--scene`` the first sample of a demo scene (``build_demo_scene.py``) is drawn. Without it, a
diffusion-only DRDM field (the engine's forward diffusion at ``--depth``, no recovery model) is drawn.
Needs slicer-core and Pillow (and torch without ``--scene``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import slicerio
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]

from DRDMSlicerLib.geometry import ijkToRasFromNode  # noqa: E402
from DRDMSlicerLib.gridtransform import fieldImageToGridTransformNode  # noqa: E402

ZOOM = 4
GRID_MM = 15.0
WINDOW = (-1000.0, 400.0)


def diffusionOnlySample(scene, depth: int, seed: int):
    """Chest CT volume node and a grid transform node holding an engine forward-diffusion field (LPS -> RAS)."""
    import torch

    from drdm_engine.core.grid import Geometry, WorkingGrid, field_to_input_voxels, to_working, voxels_to_physical
    from drdm_engine.model.sampler import sample_fields

    path = slicerio.get_testdata_file("CTChest4.nrrd")
    image = sitk.ReadImage(path, sitk.sitkFloat32)
    geometry = Geometry.of(image)
    grid = WorkingGrid.fit(geometry, 64)
    working = to_working(torch.from_numpy(sitk.GetArrayFromImage(image))[None, None], grid)
    generator = torch.Generator().manual_seed(seed)
    fields = sample_fields(working, 1, depth, None, generator=generator)
    lps = voxels_to_physical(field_to_input_voxels(fields.composed, grid), geometry)[0]
    field = sitk.GetImageFromArray(lps.permute(1, 2, 3, 0).numpy().astype(np.float64), isVector=True)
    field.CopyInformation(image)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CTChest")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.ReadData(volume)
    transform = fieldImageToGridTransformNode(field, scene, "diffusion_only")
    deformed = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CTChest_deformed")
    transformed = sitk.Resample(image, image, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, -1000.0)
    deformed.CopyOrientation(volume)
    slicer.util.updateVolumeFromArray(deformed, sitk.GetArrayFromImage(transformed))
    return deformed, transform, f"diffusion-only DRDM field, depth {depth}"


def sceneSample(scene, path: Path):
    """First sample volume and its grid transform of a saved demo scene."""
    scene.SetURL(str(path))
    if not scene.Import():
        raise RuntimeError(f"cannot read {path}")
    transform = scene.GetFirstNodeByClass("vtkMRMLGridTransformNode")
    volume = scene.GetFirstNode(transform.GetName().replace("_transform", ""), "vtkMRMLScalarVolumeNode")
    return volume, transform, "DRDM sample from the demo scene"


def renderGridOverlay(volume, transform, caption: str, out: Path) -> None:
    """Axial middle slice, windowed, oriented as Slicer's axial view (anterior up, patient right on the
    left), with the grid lines Slicer draws (grid points mapped to parent)."""
    array = slicer.util.arrayFromVolume(volume)
    k = array.shape[0] // 2
    low, high = WINDOW
    pixels = np.clip((array[k].astype(float) - low) / (high - low), 0, 1)[::-1, ::-1] * 255
    picture = Image.fromarray(pixels.astype(np.uint8)).convert("RGB")
    picture = picture.resize((picture.width * ZOOM, picture.height * ZOOM), Image.BILINEAR)
    draw = ImageDraw.Draw(picture)
    ijkToRas = ijkToRasFromNode(volume)
    rasToIjk = np.linalg.inv(ijkToRas)
    toParent = transform.GetTransformToParent()
    corners = np.array([ijkToRas @ [i, j, k, 1] for i in (0, array.shape[2] - 1) for j in (0, array.shape[1] - 1)])[:, :3]
    lowRas, highRas = corners.min(0), corners.max(0)
    z = (ijkToRas @ [0, 0, k, 1])[2]
    for axis in (0, 1):
        for position in np.arange(lowRas[axis], highRas[axis], GRID_MM):
            other = np.linspace(lowRas[1 - axis], highRas[1 - axis], 120)
            points = []
            for value in other:
                ras = [0.0, 0.0, z]
                ras[axis], ras[1 - axis] = position, value
                moved = np.array(toParent.TransformPoint(ras))
                i, j, _, _ = rasToIjk @ [*moved, 1.0]
                points.append(((array.shape[2] - 0.5 - i) * ZOOM, (array.shape[1] - 0.5 - j) * ZOOM))
            draw.line(points, fill=(255, 210, 40), width=2)
    draw.rectangle((0, 0, picture.width, 22), fill=(0, 0, 0))
    draw.text((6, 5), f"{volume.GetName()} - {caption} - grid {GRID_MM:g} mm", fill=(255, 255, 255))
    picture.save(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scene", type=Path, help="a demo scene (.mrml) to draw the first sample of")
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
    if args.scene:
        volume, transform, caption = sceneSample(scene, args.scene)
    else:
        volume, transform, caption = diffusionOnlySample(scene, args.depth, args.seed)
    renderGridOverlay(volume, transform, caption, args.out / "grid_overlay.png")
    print(f"wrote {args.out / 'grid_overlay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
