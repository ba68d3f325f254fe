"""MRML-side logic of the DRDMSlicer module (no Qt): generation through the engine's worker process,
conversion of its files to volume, segmentation and grid transform nodes, and export."""
from .export import export
from .logic import DEFAULT_DEPTH, DEVICES, MAX_DEPTH, DRDMLogic, Generation, GenerationSettings
from .results import SampleResult, loadResults
from .sequences import samplesAsSequence
from .transforms import fieldImageToGridTransform, fieldImageToGridTransformNode, showAsGrid

__all__ = ["DEFAULT_DEPTH", "DEVICES", "MAX_DEPTH", "DRDMLogic", "Generation", "GenerationSettings",
           "SampleResult", "export", "fieldImageToGridTransform", "fieldImageToGridTransformNode",
           "loadResults", "samplesAsSequence", "showAsGrid"]
