"""MRML-side logic of the DRDMSlicer module (no Qt): generation through the engine's worker process,
conversion of its files to volume, segmentation and grid transform nodes, and export."""
from .display import showSample
from .export import export
from .logic import DEFAULT_DEPTH, DEVICES, MAX_DEPTH, DRDMLogic, Generation, GenerationSettings
from .results import SampleResult, loadResults, presentResults, removeResults
from .sequences import removeSequence, samplesAsSequence
from .gridtransform import fieldImageToGridTransform, fieldImageToGridTransformNode, showAsGrid

__all__ = ["DEFAULT_DEPTH", "DEVICES", "MAX_DEPTH", "DRDMLogic", "Generation", "GenerationSettings",
           "SampleResult", "export", "fieldImageToGridTransform", "fieldImageToGridTransformNode",
           "loadResults", "presentResults", "removeResults", "removeSequence", "samplesAsSequence",
           "showAsGrid", "showSample"]
