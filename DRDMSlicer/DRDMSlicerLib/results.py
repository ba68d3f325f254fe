"""Load the engine's output folder (manifest, images, segmentations, fields) into MRML nodes; no Qt."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import slicer

from .geometry import sameGrid
from .segments import buildSegmentationNode, masksFromLabels, readSegmentationFile, segmentIds
from .gridtransform import fieldImageToGridTransformNode, showAsGrid


@dataclass
class SampleResult:
    """One generated sample: its nodes, quality figures (from the engine) and generation settings."""

    volumeNode: object
    segmentationNode: object | None
    transformNode: object
    metrics: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def nodes(self) -> list:
        """The MRML nodes of this sample (segmentation omitted when absent)."""
        return [n for n in (self.volumeNode, self.segmentationNode, self.transformNode) if n is not None]


def removeNode(node) -> None:
    """Remove ``node`` with its display and storage nodes from its scene (if it is in one)."""
    scene = node.GetScene() if node is not None else None
    if scene is None or not scene.IsNodePresent(node):
        return
    helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] \
        if hasattr(node, "GetNumberOfDisplayNodes") else []
    helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())] \
        if hasattr(node, "GetNumberOfStorageNodes") else []
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


def removeResults(results: list[SampleResult]) -> None:
    """Remove the generated nodes of ``results`` (and only those) from their scene."""
    for result in results:
        for node in result.nodes():
            removeNode(node)


def presentResults(results: list[SampleResult], scene) -> list[SampleResult]:
    """``results`` without the samples whose volume or grid transform left ``scene`` (deleted by the user);
    a deleted segmentation is dropped from its sample."""
    kept = []
    for result in results:
        if scene.IsNodePresent(result.volumeNode) and scene.IsNodePresent(result.transformNode):
            if result.segmentationNode is not None and not scene.IsNodePresent(result.segmentationNode):
                result.segmentationNode = None
            kept.append(result)
    return kept


MANIFEST_SCHEMA = "drdm-manifest"


def readManifest(manifestPath: Path) -> dict:
    """The engine's manifest (schema ``drdm-manifest``), checked for one case with a list of samples."""
    try:
        manifest = json.loads(Path(manifestPath).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the engine's manifest {manifestPath}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise ValueError(f"{manifestPath} is not a DRDM engine manifest; update the DRDM engine and the module together")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or len(cases) != 1 or not isinstance(cases[0].get("samples"), list) \
            or not cases[0]["samples"]:
        raise ValueError(f"the engine's manifest {manifestPath} lists no samples")
    return manifest


def manifestSamples(manifest: dict) -> list[dict]:
    """The samples of the one case of a manifest read by :func:`readManifest`."""
    return manifest["cases"][0]["samples"]


def _checkGrid(path: Path, inputVolumeNode, what: str) -> None:
    """Refuse a file whose grid (read from its header only) is not the input volume's."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if not sameGrid(reader, inputVolumeNode):
        raise ValueError(f"the engine's {what} {path.name} does not lie on the input volume's grid")


def _volumeNode(scene, name: str, path: Path, inputVolumeNode):
    """Volume node of an engine image, with the input's geometry and window/level."""
    _checkGrid(path, inputVolumeNode, "image")
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    node.CopyOrientation(inputVolumeNode)
    scene.AddNode(node)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    node.CreateDefaultDisplayNodes()
    source = inputVolumeNode.GetDisplayNode()
    if source is not None and hasattr(source, "GetWindow"):
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(source.GetWindow(), source.GetLevel())
        if source.GetColorNodeID():
            display.SetAndObserveColorNodeID(source.GetColorNodeID())
    return node


def _segmentationNode(scene, name: str, path: Path, inputSegmentationNode, volumeNode, inputVolumeNode):
    """Segmentation node of an engine ``.seg.nrrd`` with the input segmentation's segments."""
    _checkGrid(path, inputVolumeNode, "segmentation")
    labels, labelValues = readSegmentationFile(path)
    masks = masksFromLabels(labels, labelValues, segmentIds(inputSegmentationNode))
    del labels
    node = buildSegmentationNode(scene, name, inputSegmentationNode, masks, volumeNode)
    node.CreateDefaultDisplayNodes()
    return node


def _transformNode(scene, name: str, path: Path, inputVolumeNode):
    """Grid transform node of an engine displacement field (the full field is freed on return)."""
    _checkGrid(path, inputVolumeNode, "displacement field")
    return fieldImageToGridTransformNode(sitk.ReadImage(str(path)), scene, name)


def loadSample(scene, folder: Path, sample: dict, number: int, inputVolumeNode, inputSegmentationNode=None,
               settings: dict | None = None) -> SampleResult:
    """Create the nodes of one manifest sample, named ``<input>_drdm_<number>``, under the input volume's
    parent transform (so that they overlay it), segmentation and grid hidden; removes them on failure.
    Each file is read in its own function so that only one full-size temporary is alive at a time."""
    baseName = f"{inputVolumeNode.GetName()}_drdm_{number}"
    created: list = []
    try:
        volumeNode = _volumeNode(scene, baseName, folder / sample["images"][0], inputVolumeNode)
        created.append(volumeNode)
        segmentationNode = None
        if inputSegmentationNode is not None and segmentIds(inputSegmentationNode):
            if not sample.get("labels"):
                raise ValueError("the engine returned no segmentation for a sample")
            segmentationNode = _segmentationNode(scene, f"{inputSegmentationNode.GetName()}_drdm_{number}",
                                                 folder / sample["labels"], inputSegmentationNode, volumeNode,
                                                 inputVolumeNode)
            created.append(segmentationNode)
        transformNode = _transformNode(scene, f"{baseName}_transform", folder / sample["field"], inputVolumeNode)
        created.append(transformNode)
        showAsGrid(transformNode, volumeNode, visible=False)
        for node in created:
            node.SetAndObserveTransformNodeID(inputVolumeNode.GetTransformNodeID())
    except Exception:
        for node in reversed(created):
            removeNode(node)
        raise
    return SampleResult(volumeNode, segmentationNode, transformNode, dict(sample.get("metrics", {})),
                        dict(settings or {}))


def nextSampleNumber(scene, inputVolumeNode) -> int:
    """First k such that no volume named ``<input>_drdm_j`` with j >= k exists in the scene."""
    prefix = f"{inputVolumeNode.GetName()}_drdm_"
    numbers = [0]
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        name = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName() or ""
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            numbers.append(int(name[len(prefix):]))
    return max(numbers) + 1


def loadResults(manifestPath, inputVolumeNode, inputSegmentationNode=None, scene=None,
                settings: dict | None = None) -> list[SampleResult]:
    """Load every sample of an engine manifest into ``scene``; all or nothing (no half-made nodes)."""
    scene = scene or inputVolumeNode.GetScene()
    manifestPath = Path(manifestPath)
    manifest = readManifest(manifestPath)
    first = nextSampleNumber(scene, inputVolumeNode)
    sampleSettings = dict(settings or {})
    sampleSettings["mode"] = manifest.get("mode")
    sampleSettings["deviceUsed"] = manifest.get("settings", {}).get("device")
    results: list[SampleResult] = []
    try:
        for offset, sample in enumerate(manifestSamples(manifest)):
            results.append(loadSample(scene, manifestPath.parent, sample, first + offset, inputVolumeNode,
                                      inputSegmentationNode, dict(sampleSettings, index=sample.get("index"))))
    except Exception:
        removeResults(results)
        raise
    return results

