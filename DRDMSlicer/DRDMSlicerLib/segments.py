"""Segmentation nodes <-> per-segment binary masks on a volume's voxel grid; no Qt.

Masks are ``(K, J, I)`` uint8 numpy arrays (1 inside) aligned with the reference volume's voxels.
Labels are never interpolated: the only resampling used is Slicer's nearest-neighbour export.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .geometry import ijkToRasFromNode, vtkMatrixFromArray


def segmentIds(segmentationNode) -> list[str]:
    """Segment IDs in display order."""
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def orientedImageFromMask(mask: np.ndarray, ijkToRas: np.ndarray) -> slicer.vtkOrientedImageData:
    """``vtkOrientedImageData`` (unsigned char) holding a ``(K, J, I)`` mask with the given IJK-to-RAS."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[::-1])
    image.SetImageToWorldMatrix(vtkMatrixFromArray(ijkToRas))
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def segmentMaskOnVolumeGrid(segmentationNode, segmentId: str, volumeNode) -> np.ndarray:
    """One segment as a binary mask on ``volumeNode``'s grid (nearest-neighbour), scene left untouched."""
    ijkToRas = ijkToRasFromNode(volumeNode)
    shape = tuple(volumeNode.GetImageData().GetDimensions())[::-1]
    reference = orientedImageFromMask(np.zeros(shape, np.uint8), ijkToRas)
    labelmap = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
    resampled = slicer.vtkOrientedImageData()
    if labelmap.IsEmpty():
        return np.zeros(shape, np.uint8)
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, True):
        raise ValueError(f"segment '{segmentId}' could not be resampled onto the input volume's grid")
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(shape)
    return (values > 0).astype(np.uint8)


def segmentMasksOnVolumeGrid(segmentationNode, volumeNode) -> dict[str, np.ndarray]:
    """Every segment as a binary mask on ``volumeNode``'s grid; refuses overlapping segments."""
    masks: dict[str, np.ndarray] = {}
    covered = None
    for segmentId in segmentIds(segmentationNode):
        mask = segmentMaskOnVolumeGrid(segmentationNode, segmentId, volumeNode)
        if covered is not None and np.any(covered & mask):
            name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
            raise ValueError(f"segment '{name}' overlaps another segment; DRDM needs non-overlapping segments "
                             f"(one label per voxel)")
        covered = mask if covered is None else covered | mask
        masks[segmentId] = mask
    return masks


def buildSegmentationNode(scene, name: str, sourceNode, masks: dict[str, np.ndarray], referenceVolumeNode):
    """New segmentation node in ``scene`` with ``sourceNode``'s segment IDs, names, colours and tags,
    filled from ``masks`` (on ``referenceVolumeNode``'s grid), with that volume's reference geometry."""
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name)
    scene.AddNode(node)
    node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    ijkToRas = ijkToRasFromNode(referenceVolumeNode)
    source = sourceNode.GetSegmentation()
    for segmentId, mask in masks.items():
        segment = slicer.vtkSegment()
        segment.DeepCopyMetadata(source.GetSegment(segmentId))
        node.GetSegmentation().AddSegment(segment, segmentId)
        image = orientedImageFromMask(mask, ijkToRas)
        if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                image, node, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, image.GetExtent()):
            raise ValueError(f"could not set the voxels of segment '{segmentId}'")
    return node


def readSegmentationFile(path: str) -> tuple[np.ndarray, dict[str, int]]:
    """Voxels ``(K, J, I)`` of a one-layer ``.seg.nrrd`` and its segment ID -> label value map."""
    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"segmentation {path} has several layers; expected one label per voxel")
    keys = set(image.GetMetaDataKeys())
    labelValues: dict[str, int] = {}
    index = 0
    while f"Segment{index}_ID" in keys:
        labelValues[image.GetMetaData(f"Segment{index}_ID")] = int(image.GetMetaData(f"Segment{index}_LabelValue"))
        index += 1
    return sitk.GetArrayFromImage(image), labelValues


def masksFromLabels(labels: np.ndarray, labelValues: dict[str, int], wanted: list[str]) -> dict[str, np.ndarray]:
    """Binary masks of the ``wanted`` segment IDs from a label array; every wanted ID must be present."""
    missing = [segmentId for segmentId in wanted if segmentId not in labelValues]
    if missing:
        raise ValueError(f"the engine's segmentation lacks segments {missing}")
    return {segmentId: (labels == labelValues[segmentId]).astype(np.uint8) for segmentId in wanted}
