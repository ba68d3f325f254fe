"""Show one generated sample at a time in the slice views; no Qt."""
from __future__ import annotations

from .results import SampleResult


def showSample(results: list[SampleResult], index: int | None) -> None:
    """Show sample ``index``: its volume as the slice views' background, its segmentation and its grid;
    hide every other sample's segmentation and grid (``index`` None hides them all)."""
    for number, result in enumerate(results):
        for node in (result.segmentationNode, result.transformNode):
            display = node.GetDisplayNode() if node is not None else None
            if display is not None:
                display.SetVisibility(number == index)
    if index is not None:
        setBackground(results[index].volumeNode)


def setBackground(volumeNode) -> None:
    """Make ``volumeNode`` the background of every slice view of its scene."""
    scene = volumeNode.GetScene()
    for number in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        scene.GetNthNodeByClass(number, "vtkMRMLSliceCompositeNode").SetBackgroundVolumeID(volumeNode.GetID())
