"""Displacement fields (ITK, LPS mm, pull convention) as Slicer grid transform nodes; no Qt."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .geometry import LPS_TO_RAS, ijkToRasFromImage, vtkMatrixFromArray


def fieldArrayRAS(field: sitk.Image) -> np.ndarray:
    """Displacement vectors of an LPS field image as a ``(K, J, I, 3)`` float64 array in RAS mm."""
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError("a displacement field must be a 3D image with 3 components per voxel, got "
                         f"{field.GetDimension()}D with {field.GetNumberOfComponentsPerPixel()} components")
    vectors = sitk.GetArrayFromImage(field).astype(np.float64)
    return vectors * np.diag(LPS_TO_RAS)


def fieldImageToGridTransform(field: sitk.Image) -> slicer.vtkOrientedGridTransform:
    """``vtkOrientedGridTransform`` on the field's grid with its vectors converted LPS -> RAS (mm).

    ``field``: 3-component displacement image, vectors in LPS millimetres, resampling convention
    ``out(x) = in(x + u(x))``. Set the result as a node's FromParent transform to use it as is.
    """
    vectors = fieldArrayRAS(field)
    ijkToRas = ijkToRasFromImage(field)
    spacing = np.array(field.GetSpacing(), dtype=float)
    grid = vtk.vtkImageData()
    grid.SetDimensions(field.GetSize())
    grid.SetSpacing(*spacing)
    grid.SetOrigin(*ijkToRas[:3, 3])
    scalars = numpy_support.numpy_to_vtk(vectors.reshape(-1, 3), deep=True, array_type=vtk.VTK_DOUBLE)
    scalars.SetNumberOfComponents(3)
    grid.GetPointData().SetScalars(scalars)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(vtkMatrixFromArray(ijkToRas[:3, :3] / spacing))
    transform.SetInterpolationModeToLinear()
    return transform


def fieldImageToGridTransformNode(field: sitk.Image, scene, name: str):
    """New ``vtkMRMLGridTransformNode`` in ``scene`` whose FromParent transform is ``field`` in RAS mm."""
    node = slicer.vtkMRMLGridTransformNode()
    node.SetName(name)
    node.SetAndObserveTransformFromParent(fieldImageToGridTransform(field))
    scene.AddNode(node)
    return node


def showAsGrid(transformNode, regionNode=None, gridSpacingMm: float = 10.0) -> None:
    """Display the transform as a deformed grid in the slice views (and 3D, within ``regionNode``)."""
    transformNode.CreateDefaultDisplayNodes()
    display = transformNode.GetDisplayNode()
    display.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID)
    display.SetGridSpacingMm(gridSpacingMm)
    if regionNode is not None:
        display.SetAndObserveRegionNode(regionNode)
    display.SetVisibility(True)
    display.SetVisibility2D(True)
