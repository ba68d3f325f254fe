"""All samples of a generation as one sequence: browse them with the Sequences slider; no Qt."""
from __future__ import annotations

import slicer
import vtk

from .results import SampleResult, removeNode
from .gridtransform import showAsGrid

INDEX_NAME = "sample"


def sequencesLogic(scene):
    """The Sequences module's logic in Slicer; headless (slicer-core), a new one on ``scene`` (which
    also registers the sequence node classes there)."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "sequences"):
        return modules.sequences.logic()
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(scene)
    return logic


def _sequence(scene, name: str, nodes: list) -> object:
    """A ``vtkMRMLSequenceNode`` holding a copy of each node, indexed ``0, 1, …`` (index name "sample")."""
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName(INDEX_NAME)
    sequence.SetIndexUnit("")
    sequence.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
    for index, node in enumerate(nodes):
        sequence.SetDataNodeAtValue(node, str(index))
    return sequence


def samplesAsSequence(results: list[SampleResult], name: str = "DRDM samples"):
    """Put the samples' volumes, segmentations (when present) and grid transforms into synchronized
    sequences under one ``vtkMRMLSequenceBrowserNode`` (returned); its proxy nodes show the selected
    sample, the transform proxy drawn as a grid. The per-sample nodes stay in the scene for export.

    """
    if not results:
        raise ValueError("no samples to put into a sequence")
    scene = results[0].volumeNode.GetScene()
    logic = sequencesLogic(scene)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", name)
    columns = {"volumes": [r.volumeNode for r in results], "transforms": [r.transformNode for r in results]}
    if all(r.segmentationNode is not None for r in results):
        columns["segmentations"] = [r.segmentationNode for r in results]
    sequences = {kind: _sequence(scene, f"{name} {kind}", nodes) for kind, nodes in columns.items()}
    browser.SetAndObserveMasterSequenceNodeID(sequences["volumes"].GetID())
    for kind in ("transforms", "segmentations"):
        if kind in sequences:
            browser.AddSynchronizedSequenceNodeID(sequences[kind].GetID())
    browser.SetSelectedItemNumber(0)
    logic.UpdateProxyNodesFromSequences(browser)
    showAsGrid(browser.GetProxyNode(sequences["transforms"]), browser.GetProxyNode(sequences["volumes"]))
    return browser


def removeSequence(browser) -> None:
    """Remove a browser made by :func:`samplesAsSequence` with its sequences and proxy nodes."""
    scene = browser.GetScene()
    if scene is None:
        return
    collection = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    sequences = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    proxies = [browser.GetProxyNode(sequence) for sequence in sequences]
    for node in [browser, *sequences, *proxies]:
        removeNode(node)
