"""DRDMSlicer: diverse, realistic deformations of one patient's image and segmentation (DRDM).

The widget is thin: settings live in a parameter node, the MRML work in ``DRDMSlicerLib`` (no Qt),
and generation runs in a worker process (PythonSlicer) followed by a QTimer.
"""
import importlib.util
import logging
import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from DRDMSlicerLib import DEFAULT_DEPTH, MAX_DEPTH, DRDMLogic, samplesAsSequence

# Python packages the engine needs beyond Slicer's own numpy and SimpleITK (import name -> pip name).
ENGINE_PACKAGES = {"slicerio": "slicerio", "yaml": "pyyaml", "tqdm": "tqdm", "PIL": "pillow"}


class DRDMSlicer(ScriptedLoadableModule):
    """Module description for Slicer's module list."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DRDM Augmentation")
        self.parent.categories = [_("Utilities")]
        self.parent.dependencies = []
        self.parent.contributors = ["DRDMSlicer developers"]
        self.parent.helpText = _(
            "Generate diverse, realistic deformations of a volume and its segmentation with the "
            "Deformation-Recovery Diffusion Model. Each sample gives a deformed volume, a deformed "
            "segmentation and its displacement field as a grid transform; export them as augmented cases.")
        self.parent.acknowledgementText = _(
            "DRDM: Zheng et al., Medical Image Analysis 110, 103987 (2026), arXiv 2407.07295.")


@parameterNodeWrapper
class DRDMSlicerParameterNode:
    """Settings of the panel; ``seed`` -1 draws a random seed, ``model`` empty uses the bundled model,
    ``none`` runs diffusion only."""

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    depth: Annotated[int, WithinRange(1, MAX_DEPTH)] = DEFAULT_DEPTH
    samples: Annotated[int, WithinRange(1, 100)] = 3
    seed: Annotated[int, WithinRange(-1, 2**31 - 1)] = -1
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    model: str = ""
    asSequence: bool = False
    exportFolder: pathlib.Path


def ensureEngineDependencies() -> bool:
    """Install torch (PyTorch extension, with confirmation) and the engine's small packages when missing.

    Returns False when the user declines. Never replaces Slicer's numpy or SimpleITK.
    """
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError("DRDMSlicer needs the PyTorch extension: install it from the Extensions Manager "
                           "and restart Slicer") from exc
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=True) is None:
        return False
    missing = [pip for module, pip in ENGINE_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        if not slicer.util.confirmOkCancelDisplay(
                _("DRDM needs these Python packages: {packages}. Install them now?").format(packages=", ".join(missing))):
            return False
        slicer.util.pip_install(missing)
    return True


class DRDMSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: inputs, settings, Generate/Cancel, progress, per-sample quality figures, Export."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._generation = None
        self._results = []
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DRDMSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DRDMSlicerLogic()
        self.ui.progressBar.setVisible(False)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerate)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self.cancelGeneration()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelGeneration()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        running = self._generation is not None
        self.ui.generateButton.text = _("Cancel") if running else _("Generate")
        self.ui.generateButton.enabled = running or bool(self._parameterNode and self._parameterNode.inputVolume)
        folder = str(self._parameterNode.exportFolder or "") if self._parameterNode else ""
        self.ui.exportButton.enabled = not running and bool(self._results) and folder not in ("", ".")

    def onGenerate(self) -> None:
        if self._generation is not None:
            self.cancelGeneration()
            self.ui.statusLabel.text = _("Cancelled.")
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Generation failed to start."), waitCursor=True):
            if not ensureEngineDependencies():
                return
            self._generation = self.logic.start(p.inputVolume, p.inputSegmentation, samples=p.samples,
                                                depth=p.depth, seed=None if p.seed < 0 else p.seed,
                                                model=p.model or None, device=p.device)
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = _("Generating...")
            self._timer.start()
        self.updateButtons()

    def cancelGeneration(self) -> None:
        self._timer.stop()
        if self._generation is not None:
            self._generation.cancel()
            self._generation = None
        self.ui.progressBar.setVisible(False)
        self.updateButtons()

    def onPoll(self) -> None:
        generation = self._generation
        if generation is None:
            self._timer.stop()
            return
        if generation.running():
            self.ui.progressBar.setValue(int(100 * generation.fraction))
            self.ui.statusLabel.text = generation.message
            return
        self._timer.stop()
        self._generation = None
        self.ui.progressBar.setVisible(False)
        try:
            results = generation.finish()
        except Exception as exc:
            logging.error("DRDM generation failed: %s", exc)
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(str(exc))
        else:
            self._results = results
            self.showResults(results)
            self.ui.statusLabel.text = _("{count} samples generated.").format(count=len(results))
        self.updateButtons()

    def showResults(self, results) -> None:
        """Fill the quality table and show the first sample with its grid in the slice views."""
        table = self.ui.resultsTable
        segmentNames = sorted({name for r in results for name in r.metrics.get("dice", {})})
        headers = [_("Sample"), _("Folding %"), _("Mean |u| mm"), _("p99 |u| mm")] + [f"Dice {n}" for n in segmentNames]
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(len(results))
        for row, result in enumerate(results):
            m = result.metrics
            values = [result.volumeNode.GetName(), f"{100 * m.get('folding_fraction', float('nan')):.2f}",
                      f"{m.get('displacement_mean_mm', float('nan')):.2f}",
                      f"{m.get('displacement_p99_mm', float('nan')):.2f}"]
            values += [f"{m.get('dice', {}).get(n, float('nan')):.3f}" for n in segmentNames]
            for column, value in enumerate(values):
                table.setItem(row, column, qt.QTableWidgetItem(value))
        shown = results[0].volumeNode
        if self._parameterNode.asSequence:
            browser = samplesAsSequence(results, f"{results[0].settings.get('input', 'DRDM')} samples")
            slicer.modules.sequences.setToolBarActiveBrowserNode(browser)
            shown = browser.GetProxyNode(browser.GetMasterSequenceNode())
        slicer.util.setSliceViewerLayers(background=shown, fit=True)

    def onExport(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            manifest = self.logic.export(self._results, self._parameterNode.exportFolder)
            self.ui.statusLabel.text = _("Exported to {path}").format(path=manifest.parent)


class DRDMSlicerLogic(ScriptedLoadableModuleLogic, DRDMLogic):
    """Module logic: the parameter node plus ``DRDMLogic``'s ``generate``, ``start`` and ``export``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        DRDMLogic.__init__(self)

    def getParameterNode(self):
        return DRDMSlicerParameterNode(super().getParameterNode())


class DRDMSlicerTest(ScriptedLoadableModuleTest):
    """In-application test: diffusion-only generation on a small synthetic volume, then export."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_generate_and_export()

    def test_generate_and_export(self) -> None:
        import numpy as np
        import tempfile

        self.delayDisplay("Starting DRDM generation test")
        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("torch is not installed: install it from the DRDM panel first; test skipped")
            return
        k, j, i = np.mgrid[0:32, 0:32, 0:32]
        array = (1000 * np.exp(-((i - 16) ** 2 + (j - 14) ** 2 + (k - 15) ** 2) / 60.0)).astype(np.float32)
        ijkToRas = np.array([[-1.0, 0, 0, 10], [0, -1.2, 0, 5], [0, 0, 1.5, -20], [0, 0, 0, 1]])
        volume = slicer.util.addVolumeFromArray(array, ijkToRas, name="blob")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("blob", "Blob", [0.2, 0.8, 0.2])
        slicer.util.updateSegmentBinaryLabelmapFromArray((array > 500).astype(np.uint8), segmentation, segmentId, volume)
        results = DRDMSlicerLogic().generate(volume, segmentation, samples=2, depth=4, seed=1, model="none")
        self.assertEqual([r.volumeNode.GetName() for r in results], ["blob_drdm_1", "blob_drdm_2"])
        for result in results:
            self.assertEqual(result.segmentationNode.GetSegmentation().GetSegment("blob").GetName(), "Blob")
            display = result.transformNode.GetDisplayNode()
            self.assertEqual(display.GetVisualizationMode(), slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID)
        browser = samplesAsSequence(results)
        self.assertEqual(browser.GetMasterSequenceNode().GetNumberOfDataNodes(), 2)
        folder = pathlib.Path(tempfile.mkdtemp())
        manifest = DRDMSlicerLogic().export(results, folder)
        self.assertTrue(manifest.is_file())
        self.assertTrue((folder / "blob_drdm_1.seg.nrrd").is_file())
        self.delayDisplay("Test passed")
