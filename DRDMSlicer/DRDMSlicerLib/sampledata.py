"""The bundled try-it case: the chest CT and its 7-structure segmentation shipped in the ``slicerio``
wheel (MIT), the engine's default case; found without importing anything; no Qt."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SAMPLE_FILES = ("CTChest4.nrrd", "Segmentation.seg.nrrd")


def sampleCasePaths() -> tuple[Path, Path] | None:
    """Paths of the chest CT and its segmentation, or None while ``slicerio`` is not installed."""
    spec = importlib.util.find_spec("slicerio")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "data"
    volume, segmentation = (folder / name for name in SAMPLE_FILES)
    return (volume, segmentation) if volume.is_file() and segmentation.is_file() else None


def loadSampleCase(scene) -> tuple:
    """Read the sample case into ``scene``: (volume node "DRDMChestCT", segmentation node); raises
    ValueError with a hint while ``slicerio`` is missing."""
    import slicer

    paths = sampleCasePaths()
    if paths is None:
        raise ValueError("the sample case comes with the slicerio package: press Generate once to install "
                         "the engine's packages, or run slicer.util.pip_install('slicerio')")
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "DRDMChestCT")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "DRDMChestCT segmentation")
    for node, storage, path in ((volume, slicer.vtkMRMLVolumeArchetypeStorageNode(), paths[0]),
                                (segmentation, slicer.vtkMRMLSegmentationStorageNode(), paths[1])):
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            raise ValueError(f"could not read the sample file {path}")
        node.CreateDefaultDisplayNodes()
    return volume, segmentation
