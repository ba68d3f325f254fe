"""Small test helpers: MRML volumes to and from files and SimpleITK images."""
import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from DRDMSlicerLib.geometry import LPS_TO_RAS, ijkToRasFromNode


def loadVolume(scene, path, cls="vtkMRMLScalarVolumeNode"):
    """Read a volume file into a new node through a volume storage node."""
    node = scene.AddNewNodeByClass(cls)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"could not read {path}"
    node.CreateDefaultDisplayNodes()
    return node


def nodeToImage(volumeNode):
    """SimpleITK image (LPS geometry) of a volume node's voxels."""
    matrix = ijkToRasFromNode(volumeNode)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image = sitk.GetImageFromArray(slicer.util.arrayFromVolume(volumeNode).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(LPS_TO_RAS @ matrix[:3, 3])
    image.SetDirection((LPS_TO_RAS @ matrix[:3, :3] / spacing).ravel())
    return image


def hardened(scene, volumeNode, transformNode):
    """Clone ``volumeNode``, harden ``transformNode`` on it with Slicer's own logic; SimpleITK image of it."""
    clone = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    clone.CopyOrientation(volumeNode)
    imageData = vtk.vtkImageData()
    imageData.DeepCopy(volumeNode.GetImageData())
    clone.SetAndObserveImageData(imageData)
    clone.SetAndObserveTransformNodeID(transformNode.GetID())
    assert slicer.vtkSlicerTransformLogic().hardenTransform(clone)
    assert clone.GetParentTransformNode() is None
    result = nodeToImage(clone)
    scene.RemoveNode(clone)
    return result


def hardeningError(scene, volumeNode, transformNode, image, field, margin=3):
    """Mean |Slicer hardening - ITK resampling with ``field``| (same sampling points, one interpolation
    each), over hardened-grid voxels lying ``margin`` voxels inside the input grid."""
    slicerResult = hardened(scene, volumeNode, transformNode)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    expected = sitk.Resample(image, slicerResult, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    inside = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    inside.CopyInformation(image)
    inside[margin:-margin, margin:-margin, margin:-margin] = 1
    mask = sitk.GetArrayFromImage(sitk.Resample(inside, slicerResult, sitk.Transform(), sitk.sitkNearestNeighbor))
    difference = np.abs(sitk.GetArrayFromImage(slicerResult) - sitk.GetArrayFromImage(expected))
    return float(difference[mask > 0].mean())


def addSegmentation(scene, volumeNode, segments):
    """Segmentation node with ``segments``: list of (id, name, colour, mask (K, J, I))."""
    from DRDMSlicerLib.segments import orientedImageFromMask

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    for segmentId, name, colour, mask in segments:
        node.GetSegmentation().AddEmptySegment(segmentId, name, colour)
        image = orientedImageFromMask(mask, ijkToRasFromNode(volumeNode))
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, node, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, image.GetExtent())
    node.CreateDefaultDisplayNodes()
    return node


def segmentMask(segmentationNode, segmentId, referenceVolumeNode):
    """Binary mask (K, J, I) of one segment on the reference volume's grid."""
    from DRDMSlicerLib.segments import segmentMaskOnVolumeGrid

    return segmentMaskOnVolumeGrid(segmentationNode, segmentId, referenceVolumeNode)
