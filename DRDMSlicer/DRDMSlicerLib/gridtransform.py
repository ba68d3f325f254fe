"""Displacement fields (ITK, LPS mm, pull convention) as Slicer grid transform nodes; no Qt."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .geometry import LPS_TO_RAS, ijkToRasFromImage, vtkMatrixFromArray

# Points per axis of a sample's grid transform. The engine's fields are smooth on its working grid
# (128 per side in 3D), so a transform grid of at most 128 points per axis keeps them (about 25 MB of
# float32 per sample, instead of 1.9 GB of float64 on a 512 x 512 x 300 CT).
MAX_GRID_POINTS = 128


def checkField(field: sitk.Image) -> None:
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError("a displacement field must be a 3D image with 3 components per voxel, got "
                         f"{field.GetDimension()}D with {field.GetNumberOfComponentsPerPixel()} components")


def coarseField(field: sitk.Image, maxPoints: int = MAX_GRID_POINTS) -> sitk.Image:
    """``field`` linearly resampled onto at most ``maxPoints`` points per axis spanning the same box
    (first and last voxel centres kept, same origin and direction); unchanged when already that small."""
    size = field.GetSize()
    target = [min(n, maxPoints) for n in size]
    if list(size) == target:
        return field
    reference = sitk.Image(target, field.GetPixelID())
    reference.SetOrigin(field.GetOrigin())
    reference.SetDirection(field.GetDirection())
    reference.SetSpacing([s * (n - 1) / (m - 1) if m > 1 else s
                          for s, n, m in zip(field.GetSpacing(), size, target)])
    return sitk.Resample(field, reference, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())


def fieldArrayRAS(field: sitk.Image) -> np.ndarray:
    """Displacement vectors of an LPS field image (checked by the caller) as a ``(K, J, I, 3)`` float32
    array in RAS mm."""
    vectors = sitk.GetArrayViewFromImage(field).astype(np.float32)
    vectors *= np.diag(LPS_TO_RAS).astype(np.float32)
    return vectors


def fieldImageToGridTransform(field: sitk.Image, maxPoints: int = MAX_GRID_POINTS) -> slicer.vtkOrientedGridTransform:
    """``vtkOrientedGridTransform`` holding ``field`` (on at most ``maxPoints`` points per axis, see
    :func:`coarseField`) as float32 vectors converted LPS -> RAS (mm).

    ``field``: 3-component displacement image, vectors in LPS millimetres, resampling convention
    ``out(x) = in(x + u(x))``. Set the result as a node's FromParent transform to use it as is.
    """
    checkField(field)
    field = coarseField(field, maxPoints)
    vectors = fieldArrayRAS(field)
    ijkToRas = ijkToRasFromImage(field)
    spacing = np.array(field.GetSpacing(), dtype=float)
    grid = vtk.vtkImageData()
    grid.SetDimensions(field.GetSize())
    grid.SetSpacing(*spacing)
    grid.SetOrigin(*ijkToRas[:3, 3])
    scalars = numpy_support.numpy_to_vtk(vectors.reshape(-1, 3), deep=True, array_type=vtk.VTK_FLOAT)
    scalars.SetNumberOfComponents(3)
    grid.GetPointData().SetScalars(scalars)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(vtkMatrixFromArray(ijkToRas[:3, :3] / spacing))
    transform.SetInterpolationModeToLinear()
    return transform


def fieldImageToGridTransformNode(field: sitk.Image, scene, name: str, maxPoints: int = MAX_GRID_POINTS):
    """New ``vtkMRMLGridTransformNode`` in ``scene`` whose FromParent transform is ``field`` in RAS mm."""
    node = slicer.vtkMRMLGridTransformNode()
    node.SetName(name)
    node.SetAndObserveTransformFromParent(fieldImageToGridTransform(field, maxPoints))
    scene.AddNode(node)
    return node


def showAsGrid(transformNode, regionNode=None, gridSpacingMm: float = 10.0, visible: bool = True) -> None:
    """Display the transform as a deformed grid in the slice views (and 3D, within ``regionNode``);
    ``visible`` False prepares the display but hides it (a hidden grid costs nothing to draw)."""
    transformNode.CreateDefaultDisplayNodes()
    display = transformNode.GetDisplayNode()
    display.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID)
    display.SetGridSpacingMm(gridSpacingMm)
    if regionNode is not None:
        display.SetAndObserveRegionNode(regionNode)
    display.SetVisibility2D(True)
    display.SetVisibility(visible)
