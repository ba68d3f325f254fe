"""Geometry between SimpleITK (LPS) images and MRML volume nodes (RAS); no Qt.

Matrices are 4x4 numpy arrays mapping (i, j, k, 1) voxel indices to millimetres.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def ijkToRasFromImage(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """IJK-to-RAS (4x4, mm) of a 3D SimpleITK image (or a reader that read its header), geometry in LPS."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def ijkToRasFromNode(volumeNode) -> np.ndarray:
    """IJK-to-RAS (4x4, mm) of a volume node (its own geometry, parent transforms not applied)."""
    vtkMatrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(vtkMatrix)
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtkMatrixFromArray(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    """vtkMatrix4x4 holding a 4x4 (or 3x3, padded with identity) numpy matrix."""
    full = np.eye(4)
    full[: matrix.shape[0], : matrix.shape[1]] = matrix
    vtkMatrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtkMatrix.SetElement(r, c, float(full[r, c]))
    return vtkMatrix


def sameGrid(image: sitk.Image | sitk.ImageFileReader, volumeNode, toleranceMm: float = 1e-3) -> bool:
    """True when the image (or a reader that read its header) has the node's dimensions and voxel
    positions agree within ``toleranceMm``."""
    imageData = volumeNode.GetImageData()
    if imageData is None or tuple(image.GetSize()) != tuple(imageData.GetDimensions()):
        return False
    corners = np.array([[i, j, k, 1.0] for i in (0, image.GetSize()[0] - 1)
                        for j in (0, image.GetSize()[1] - 1) for k in (0, image.GetSize()[2] - 1)]).T
    difference = (ijkToRasFromImage(image) - ijkToRasFromNode(volumeNode)) @ corners
    return float(np.abs(difference).max()) <= toleranceMm
