"""DRDMSlicer: diverse, realistic deformations of one patient's image and segmentation (DRDM).

The widget is thin: settings live in a parameter node, the MRML work in ``DRDMSlicerLib`` (no Qt),
and generation runs in a worker process (PythonSlicer) followed by a QTimer. Slicer 5.10 or later;
an older Slicer gets one line saying so and nothing else (this file stays importable by Python 3.9).
"""
import logging
import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from DRDMSlicerLib import (DEFAULT_DEPTH, MAX_DEPTH, DRDMLogic, presentResults, removeResults, removeSequence,
                           samplesAsSequence, showSample)
from DRDMSlicerLib.compatibility import slicerVersionProblem
from DRDMSlicerLib.dependencies import missingPackages, torchReady, torchRequirement
from DRDMSlicerLib.display import setBackground
from DRDMSlicerLib.models import NONE, bundledModels
from DRDMSlicerLib.sampledata import loadSampleCase, sampleCasePaths

DOCUMENTATION_URL = "https://github.com/drdm-slicer/DRDMSlicer#3d-slicer-module-drdmslicer"
SETTINGS = "DRDMSlicer/"
BROWSE = "browse"


def versionProblem():
    """One line when this Slicer is too old for the module, else None."""
    return slicerVersionProblem(slicer.app.majorVersion, slicer.app.minorVersion)


class DRDMSlicer(ScriptedLoadableModule):
    """Module description for Slicer's module list."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DRDM Augmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Utilities")]
        self.parent.dependencies = []
        self.parent.contributors = ["DRDMSlicer developers"]
        self.parent.helpText = _(
            "Generate diverse, realistic deformations of a volume and its segmentation with the "
            "Deformation-Recovery Diffusion Model. Each sample gives a deformed volume, a deformed "
            "segmentation and its displacement field as a grid transform; export them as augmented cases. "
            "See the <a href=\"{url}\">documentation</a>.").format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "DRDM: Zheng et al., Medical Image Analysis 110, 103987 (2026), arXiv 2407.07295.")
        problem = versionProblem()
        if problem:
            logging.error(problem)
            self.parent.helpText = problem
        else:
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Register the bundled chest CT and segmentation in the Sample Data module (once slicerio is installed)."""
    import SampleData

    paths = sampleCasePaths()
    if paths is None:
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="DRDM", sampleName="DRDMChestCT", uris=[path.as_uri() for path in paths],
        fileNames=[path.name for path in paths], nodeNames=["DRDMChestCT", "DRDMChestCT segmentation"],
        thumbnailFileName=str(pathlib.Path(__file__).parent / "Resources" / "Icons" / "DRDMSlicer.png"),
        loadFileType=["VolumeFile", "SegmentationFile"])


@parameterNodeWrapper
class DRDMSlicerParameterNode:
    """Settings of the panel; ``seed`` -1 draws a random seed; ``model``: a checkpoint path, ``none`` for
    diffusion only, empty for the engine's default (set through the model selector)."""

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    depth: Annotated[int, WithinRange(1, MAX_DEPTH)] = DEFAULT_DEPTH
    samples: Annotated[int, WithinRange(1, 100)] = 3
    seed: Annotated[int, WithinRange(-1, 2**31 - 1)] = -1
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    model: str = ""
    asSequence: bool = False
    exportFolder: pathlib.Path


def ensureEngineDependencies(needTorch: bool = True) -> bool:
    """Install torch (PyTorch extension, with confirmation) and the engine's small packages when missing.

    Returns False when the user declines. Torch is checked from package metadata, never imported here.
    Never replaces Slicer's numpy or SimpleITK.
    """
    if needTorch and not torchReady():
        try:
            import PyTorchUtils
        except ImportError as exc:
            raise RuntimeError("DRDMSlicer needs the PyTorch extension: install it from the Extensions Manager "
                               "and restart Slicer") from exc
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                        torchVersionRequirement=torchRequirement()) is None:
            return False
    missing = missingPackages()
    if missing:
        if not slicer.util.confirmOkCancelDisplay(
                _("DRDM needs these Python packages: {packages}. Install them now?").format(packages=", ".join(missing))):
            return False
        slicer.util.pip_install(missing)
    return True


class DRDMSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: inputs, settings, Generate/Cancel, progress, log, per-sample table, Clear, Export."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._generation = None
        self._results = []
        self._browser = None
        self._logLines = 0
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        problem = versionProblem()
        if problem:
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DRDMSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DRDMSlicerLogic()
        self.ui.depthSlider.maximum = MAX_DEPTH  # the engine's range and default (drdm_engine/core/defaults.py)
        self.ui.depthSlider.value = DEFAULT_DEPTH
        self.ui.depthSlider.toolTip = (f"Diffusion depth T0 (1-{MAX_DEPTH}): larger gives larger, more varied "
                                       f"deformations")
        self.ui.progressBar.setVisible(False)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerate)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.clearButton.connect("clicked(bool)", self.onClear)
        self.ui.sampleDataButton.connect("clicked(bool)", self.onLoadSampleData)
        self.ui.resultsTable.connect("cellClicked(int,int)", self.onSampleClicked)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        self.initializeParameterNode()
        self.fillModels()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.cancelGeneration()

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelGeneration()
        self.setParameterNode(None)
        self.setResults([])

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onNodeRemoved(self, caller, event) -> None:
        """Samples whose nodes the user deleted drop out of the table and the export."""
        present = presentResults(self._results, slicer.mrmlScene)
        if len(present) != len(self._results):
            self.setResults(present)

    def initializeParameterNode(self) -> None:
        """The module's parameter node, with the remembered export folder and device, bound to the panel."""
        p = self.logic.getParameterNode()
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        settings = qt.QSettings()
        if str(p.exportFolder or "") in ("", ".") and settings.value(SETTINGS + "exportFolder"):
            p.exportFolder = pathlib.Path(settings.value(SETTINGS + "exportFolder"))
        if settings.value(SETTINGS + "device") in ("auto", "cpu", "cuda"):
            p.device = settings.value(SETTINGS + "device")
        combo = self.ui.modelComboBox
        if combo.count():
            p.model = combo.itemData(combo.currentIndex) or ""
        self.setParameterNode(p)

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
        """Buttons follow the state; export folder and device are remembered across sessions."""
        running = self._generation is not None
        p = self._parameterNode
        self.ui.generateButton.text = _("Cancel") if running else _("Generate")
        self.ui.generateButton.enabled = running or bool(p and p.inputVolume)
        folder = str(p.exportFolder or "") if p else ""
        self.ui.exportButton.enabled = not running and bool(self._results) and folder not in ("", ".")
        self.ui.clearButton.enabled = not running and bool(self._results)
        self.ui.modelNoteLabel.visible = bool(p) and p.model == NONE
        if p:
            settings = qt.QSettings()
            if folder not in ("", "."):
                settings.setValue(SETTINGS + "exportFolder", folder)
            settings.setValue(SETTINGS + "device", p.device)

    # --- model selector ------------------------------------------------------------------------------

    def fillModels(self) -> None:
        """Bundled models by name with their card's summary, models browsed before, none, Browse..."""
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for model in bundledModels():
            combo.addItem(f"{model.name}: {model.summary}" if model.summary else model.name, model.path)
        combo.addItem(_("none (diffusion only)"), NONE)
        for path in self.browsedModels():
            combo.addItem(pathlib.Path(path).name, path)
        combo.addItem(_("Browse..."), BROWSE)
        values = [combo.itemData(i) for i in range(combo.count())]
        remembered = qt.QSettings().value(SETTINGS + "model")
        combo.setCurrentIndex(values.index(remembered) if remembered in values else 0)
        combo.blockSignals(False)
        self.onModelChosen(combo.currentIndex)

    @staticmethod
    def browsedModels() -> list:
        paths = qt.QSettings().value(SETTINGS + "browsedModels") or []
        return [path for path in ([paths] if isinstance(paths, str) else paths) if pathlib.Path(path).is_file()]

    def onModelChosen(self, index: int) -> None:
        combo = self.ui.modelComboBox
        value = combo.itemData(index)
        if value == BROWSE:
            path = qt.QFileDialog.getOpenFileName(self.parent, _("Choose a DRDM model"), "",
                                                  _("DRDM models (*.pt)"))
            if path:
                qt.QSettings().setValue(SETTINGS + "browsedModels", [*self.browsedModels(), path])
                qt.QSettings().setValue(SETTINGS + "model", path)
            self.fillModels()
            return
        qt.QSettings().setValue(SETTINGS + "model", value)
        if self._parameterNode:
            self._parameterNode.model = value or ""
        self.updateButtons()

    # --- generation ---------------------------------------------------------------------------------

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
            self._logLines = 0
            self.ui.logTextEdit.clear()
            self.ui.deviceLabel.text = ""
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

    def showLog(self, generation) -> None:
        """Append the worker's new log lines to the log area."""
        lines = generation.log()
        for line in lines[self._logLines:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._logLines = len(lines)

    def onPoll(self) -> None:
        generation = self._generation
        if generation is None:
            self._timer.stop()
            return
        self.showLog(generation)
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
            self.showLog(generation)
            self.showResults(results)
            mode = results[0].settings.get("mode") or ""
            self.ui.deviceLabel.text = _("Device used: {device}").format(device=results[0].settings.get("deviceUsed"))
            self.ui.statusLabel.text = _("{count} {mode} samples generated.").format(count=len(results), mode=mode)
        self.updateButtons()

    # --- samples ------------------------------------------------------------------------------------

    def setResults(self, results) -> None:
        """Hold ``results`` and list them in the table (one row per sample)."""
        self._results = list(results)
        if self._browser is not None and not self._results:
            self._browser = None
        table = self.ui.resultsTable
        segmentNames = sorted({name for r in self._results for name in r.metrics.get("dice", {})})
        headers = [_("Sample"), _("Folding %"), _("Mean |u| mm"), _("p99 |u| mm")] + [f"Dice {n}" for n in segmentNames]
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(len(self._results))
        for row, result in enumerate(self._results):
            m = result.metrics
            values = [result.volumeNode.GetName(), f"{100 * m.get('folding_fraction', float('nan')):.2f}",
                      f"{m.get('displacement_mean_mm', float('nan')):.2f}",
                      f"{m.get('displacement_p99_mm', float('nan')):.2f}"]
            values += [f"{m.get('dice', {}).get(n, float('nan')):.3f}" for n in segmentNames]
            for column, value in enumerate(values):
                table.setItem(row, column, qt.QTableWidgetItem(value))
        self.updateButtons()

    def showResults(self, results) -> None:
        """List the samples and show the first one (or the sequence, browsed from the Sequences toolbar)."""
        self.setResults(results)
        if self._parameterNode.asSequence:
            self._browser = samplesAsSequence(results, f"{results[0].settings.get('input', 'DRDM')} samples")
            showSample(results, None)
            slicer.modules.sequences.showSequenceBrowser(self._browser)
            setBackground(self._browser.GetProxyNode(self._browser.GetMasterSequenceNode()))
        else:
            showSample(results, 0)
            self.ui.resultsTable.selectRow(0)
        slicer.util.resetSliceViews()

    def onSampleClicked(self, row: int, column: int = 0) -> None:
        """Show that sample alone (in the sequence, select it)."""
        if not 0 <= row < len(self._results):
            return
        if self._browser is not None:
            self._browser.SetSelectedItemNumber(row)
        else:
            showSample(self._results, row)

    def onClear(self) -> None:
        """Remove the generated nodes (and only those)."""
        results, browser = self._results, self._browser
        self._browser = None
        self.setResults([])
        if browser is not None:
            removeSequence(browser)
        removeResults(results)
        self.ui.statusLabel.text = _("Samples cleared.")

    def onLoadSampleData(self) -> None:
        """Load the bundled chest CT and segmentation and select them as inputs."""
        with slicer.util.tryWithErrorDisplay(_("Could not load the sample data."), waitCursor=True):
            if not ensureEngineDependencies(needTorch=False):
                return
            volume, segmentation = loadSampleCase(slicer.mrmlScene)
            setBackground(volume)
            self._parameterNode.inputVolume = volume
            self._parameterNode.inputSegmentation = segmentation

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
    """In-application test: diffusion-only generation on a small synthetic volume, then export.
    Skipped, with the reason, on an unsupported Slicer or while torch or the engine's packages are missing."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_generate_and_export()

    def skipReason(self):
        problem = versionProblem()
        if problem:
            return problem
        missing = ([] if torchReady() else ["torch " + torchRequirement()]) + missingPackages()
        if missing:
            return (f"DRDM self-test skipped: {', '.join(missing)} not installed "
                    f"(press Generate once in the DRDM panel to install them)")
        return None

    def test_generate_and_export(self) -> None:
        import numpy as np
        import tempfile

        reason = self.skipReason()
        if reason:
            self.skipTest(reason)
        self.delayDisplay("Starting DRDM generation test")
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
