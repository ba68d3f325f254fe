"""Write the MRML inputs of a generation to files the engine reads; no Qt.

Files are written through a private scene so that the user's scene gets no storage nodes.
"""
from __future__ import annotations

from pathlib import Path

import slicer

from .segments import buildSegmentationNode, segmentIds, segmentMasksOnVolumeGrid


def writeVolume(volumeNode, path: Path) -> None:
    """Write a scalar volume (its own geometry) through a volume storage node."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volumeNode):
        raise OSError(f"could not write {path}")


def writeSegmentation(segmentationNode, path: Path) -> None:
    """Write a segmentation node as ``.seg.nrrd`` through a segmentation storage node."""
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(segmentationNode):
        raise OSError(f"could not write {path}")


def writeInputs(volumeNode, segmentationNode, folder: Path) -> tuple[Path, Path | None]:
    """Write ``image.nrrd`` and, when segments exist, ``labels.seg.nrrd`` on the volume's grid.

    Returns the two paths (labels ``None`` without a segmentation or without segments).
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("select an input volume that holds an image")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{volumeNode.GetName()}' has several components per voxel; "
                         f"select a scalar (grey-level) volume")
    folder = Path(folder)
    imagePath = folder / "image.nrrd"
    writeVolume(volumeNode, imagePath)
    if segmentationNode is None or not segmentIds(segmentationNode):
        return imagePath, None
    masks = segmentMasksOnVolumeGrid(segmentationNode, volumeNode)
    scene = slicer.vtkMRMLScene()
    reference = slicer.vtkMRMLScalarVolumeNode()
    reference.CopyOrientation(volumeNode)
    reference.SetAndObserveImageData(volumeNode.GetImageData())
    scene.AddNode(reference)
    onGrid = buildSegmentationNode(scene, "labels", segmentationNode, masks, reference)
    labelsPath = folder / "labels.seg.nrrd"
    writeSegmentation(onGrid, labelsPath)
    return imagePath, labelsPath
