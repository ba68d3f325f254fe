"""The module file in a stand-in Slicer application (``slicer_app_env``): the panel binds with Slicer's
own parameterNodeWrapper of 5.10 and 5.12, refuses an older Slicer, and behaves as users expect."""
import json
import sys
import time
import unittest
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("slicer")

from conftest import ROOT  # noqa: E402
from slicer_app_env import WRAPPER_TAGS, slicerApp  # noqa: E402,F401
from test_slicer_logic import FAKE_WORKER, case  # noqa: E402,F401

UI = ROOT / "DRDMSlicer" / "Resources" / "UI" / "DRDMSlicer.ui"


def boundParameters(ui=UI) -> dict:
    """SlicerParameterName -> widget class of every bound widget of the ``.ui`` file."""
    bound = {}
    for widget in ET.parse(ui).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    return bound


@pytest.mark.parametrize("tag", WRAPPER_TAGS)
def test_every_bound_widget_gets_a_connector_from_slicers_own_wrapper(slicerApp, tag):
    app = slicerApp(tag=tag)
    widget = app.widget()
    node = widget._parameterNode
    connectors = node._parameterGUIs[widget._parameterNodeGuiTag]
    assert set(connectors) == set(boundParameters())
    for name, connector in connectors.items():
        assert type(connector.widget()).__name__ == boundParameters()[name]
    widget.ui.samplesSpinBox.value = 7
    widget.ui.samplesSpinBox.valueChanged.emit(7)
    widget.ui.depthSlider.value = 12.0
    widget.ui.depthSlider.valueChanged.emit(12.0)
    assert node.samples == 7 and node.depth == 12 and isinstance(node.depth, int)


def test_a_binding_slicer_cannot_make_fails(slicerApp, tmp_path):
    """Control: the same check on a panel whose seed box is a line edit (str) bound to an int."""
    app = slicerApp()
    broken = tmp_path / "broken.ui"
    broken.write_text(UI.read_text().replace('class="QSpinBox" name="seedSpinBox"', 'class="QLineEdit" name="seedSpinBox"'))
    import slicer

    ui = slicer.util.childWidgetVariables(slicer.util.loadUI(str(broken)))
    node = app.module.DRDMSlicerLogic().getParameterNode()
    with pytest.raises(RuntimeError, match="Unable to create GUI connector"):
        node.connectGui(ui)


def test_an_older_slicer_gets_one_line_and_nothing_else(slicerApp, scene, caplog):
    app = slicerApp(version=(5, 8, 1))
    with caplog.at_level("ERROR"):
        description = app.moduleDescription()
    assert [r.getMessage() for r in caplog.records] == [description.parent.helpText]
    assert "3D Slicer 5.10 or later" in description.parent.helpText and "5.8" in description.parent.helpText
    widget = app.widget()
    [label] = widget.layout.children()
    assert type(label).__name__ == "QLabel" and label.text == description.parent.helpText
    assert scene.GetFirstNodeByClass("vtkMRMLScriptedModuleNode") is None and not app.app.connections
    with pytest.raises(unittest.SkipTest, match="5.10 or later"):
        app.module.DRDMSlicerTest().test_generate_and_export()


def test_supported_slicer_module_description(slicerApp, caplog):
    app = slicerApp(version=(5, 12, 3), tag="v5.12.3")
    with caplog.at_level("ERROR"):
        description = app.moduleDescription()
    assert not caplog.records
    assert ("qSlicerAbstractCoreModule", "Utilities") in app.i18n.calls
    assert description.parent.categories == ["Utilities"]
    assert app.module.DOCUMENTATION_URL in description.parent.helpText
    assert [signature for signature, _ in app.app.connections] == ["startupCompleted()"]


def test_torch_is_checked_from_metadata_and_installed_with_a_minimum_version(slicerApp, monkeypatch):
    from DRDMSlicerLib import dependencies

    app = slicerApp()
    import PyTorchUtils

    PyTorchUtils.calls.clear()
    assert app.module.ensureEngineDependencies()
    assert PyTorchUtils.calls == []                       # never torchInstalled(), which imports torch
    monkeypatch.setattr(dependencies, "installedVersion", lambda name: "2.1.0+cpu")
    assert not app.module.ensureEngineDependencies()      # installTorch returned None: the user declined
    assert PyTorchUtils.calls == [("installTorch", True, ">=2.2")]


def test_self_test_skips_with_a_reason_when_torch_is_missing(slicerApp, monkeypatch):
    from DRDMSlicerLib import dependencies

    app = slicerApp()
    monkeypatch.setattr(dependencies, "installedVersion", lambda name: None)
    with pytest.raises(unittest.SkipTest, match="torch >=2.2 not installed"):
        app.module.DRDMSlicerTest().test_generate_and_export()


def generate(widget, volume, segmentation, **settings):
    """Press Generate in the panel (the fake worker stands in for the engine) and poll until done."""
    p = widget._parameterNode
    p.inputVolume, p.inputSegmentation = volume, segmentation
    for name, value in settings.items():
        setattr(p, name, value)
    widget.logic.pythonExecutable, widget.logic.engineModule = sys.executable, [FAKE_WORKER]
    widget.ui.generateButton.clicked.emit(False)
    assert widget._generation is not None and widget.ui.generateButton.text == "Cancel"
    while widget._generation is not None:
        time.sleep(0.05)
        widget.onPoll()
    return widget._results


def test_panel_generation_table_display_log_clear_and_export(slicerApp, scene, case, tmp_path):
    from DRDMSlicerLib.results import removeNode

    _, volume, segmentation = case
    app = slicerApp()
    widget = app.widget()
    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(2)]
    before = scene.GetNumberOfNodes()
    results = generate(widget, volume, segmentation, samples=3)
    ui = widget.ui
    assert ui.resultsTable.rowCount == 3 and ui.resultsTable.item(2, 0).text() == "chest_drdm_3"
    assert ui.deviceLabel.text == "Device used: cpu" and "fake worker wrote 3 samples" in ui.logTextEdit.plainText
    assert not ui.exportButton.enabled                    # no export folder yet
    widget._parameterNode.exportFolder = tmp_path / "export"
    assert ui.exportButton.enabled and ui.clearButton.enabled
    ui.resultsTable.cellClicked.emit(2, 1)
    assert [bool(r.transformNode.GetDisplayNode().GetVisibility()) for r in results] == [False, False, True]
    assert [bool(r.segmentationNode.GetDisplayNode().GetVisibility()) for r in results] == [False, False, True]
    assert {view.GetBackgroundVolumeID() for view in views} == {results[2].volumeNode.GetID()}
    removeNode(results[1].volumeNode)                     # the user deletes a sample's volume
    assert ui.resultsTable.rowCount == 2 and len(widget._results) == 2
    ui.exportButton.clicked.emit(False)
    assert len(json.loads((tmp_path / "export" / "drdm_slicer_export.json").read_text())["cases"]) == 2
    ui.clearButton.clicked.emit(False)
    removeNode(results[1].transformNode)
    removeNode(results[1].segmentationNode)
    assert scene.GetNumberOfNodes() == before and ui.resultsTable.rowCount == 0
    assert not ui.exportButton.enabled and not ui.clearButton.enabled
    assert scene.IsNodePresent(volume) and scene.IsNodePresent(segmentation)


def test_sequence_option_shows_the_sequence_browser_toolbar(slicerApp, case):
    _, volume, segmentation = case
    app = slicerApp()
    widget = app.widget()
    results = generate(widget, volume, segmentation, samples=2, asSequence=True)
    assert app.modules.sequences.shown == [widget._browser]
    assert not any(r.transformNode.GetDisplayNode().GetVisibility() for r in results)
    widget.ui.resultsTable.cellClicked.emit(1, 0)
    assert widget._browser.GetSelectedItemNumber() == 1


def test_scene_close_clears_the_results_and_settings_are_remembered(slicerApp, scene, case, tmp_path):
    _, volume, segmentation = case
    app = slicerApp()
    widget = app.widget()
    generate(widget, volume, segmentation, samples=1, device="cpu", exportFolder=tmp_path)
    scene.Clear(0)
    assert widget._results == [] and widget.ui.resultsTable.rowCount == 0 and not widget.ui.exportButton.enabled
    p = widget._parameterNode
    assert p is not None and p.device == "cpu" and p.exportFolder == tmp_path     # from QSettings
    assert p.model == widget.ui.modelComboBox.itemData(widget.ui.modelComboBox.currentIndex)


def test_model_selector_lists_bundled_models_none_and_browsed_ones(slicerApp, tmp_path, monkeypatch):
    """The list comes from the engine's own registry: a bundled model's dimension is its metadata's, not a
    guess from its file name (an engine tree with the registry and both bundled models present)."""
    import shutil

    from DRDMSlicerLib.models import ModelChoice, bundledModels

    (tmp_path / "drdm_engine" / "model").mkdir(parents=True)
    shutil.copy(ROOT / "drdm_engine" / "model" / "registry.py", tmp_path / "drdm_engine" / "model" / "registry.py")
    models = tmp_path / "drdm_engine" / "models"
    models.mkdir()
    for stem in ("drdm_default_3d", "drdm_cmr_2d"):
        (models / f"{stem}.pt").write_bytes(b"")
        (models / f"{stem}.md").write_text(f"# {stem}\n\nTrained on {stem}, one-line summary.\nMore.\n")
    assert bundledModels(str(tmp_path)) == [ModelChoice("default3d", str(models / "drdm_default_3d.pt"),
                                                        "Trained on drdm_default_3d, one-line summary.")]
    assert bundledModels() == []  # this engine ships no 3D model yet
    app = slicerApp()
    monkeypatch.setattr(app.module, "bundledModels", lambda: bundledModels(str(tmp_path)))
    widget = app.widget()
    combo, p = widget.ui.modelComboBox, widget._parameterNode
    assert combo.items == ["default3d: Trained on drdm_default_3d, one-line summary.", "none (diffusion only)",
                           "Browse..."]
    assert p.model == str(models / "drdm_default_3d.pt") and not widget.ui.modelNoteLabel.visible
    combo.setCurrentIndex(1)
    assert p.model == "none" and widget.ui.modelNoteLabel.visible
    import qt

    trained = tmp_path / "my_model.pt"
    trained.write_bytes(b"")
    qt.QFileDialog.answer = str(trained)
    combo.setCurrentIndex(2)
    assert combo.items[2] == "my_model.pt" and p.model == str(trained)
    again = app.widget()                                  # the next session remembers model and list
    assert again.ui.modelComboBox.items[2] == "my_model.pt" and again._parameterNode.model == str(trained)


def test_without_a_bundled_model_the_panel_says_samples_are_diffusion_only(slicerApp, tmp_path, monkeypatch):
    app = slicerApp()
    monkeypatch.setattr(app.module, "bundledModels", lambda: [])
    widget = app.widget()
    assert widget.ui.modelComboBox.items == ["none (diffusion only)", "Browse..."]
    assert widget._parameterNode.model == "none" and widget.ui.modelNoteLabel.visible


def test_sample_data_is_registered_and_loads_with_one_click(slicerApp, scene):
    app = slicerApp()
    import SampleData

    app.module.registerSampleData()
    [entry] = SampleData.registered
    assert entry["fileNames"] == ["CTChest4.nrrd", "Segmentation.seg.nrrd"]
    assert all(uri.startswith("file://") for uri in entry["uris"])
    widget = app.widget()
    widget.ui.sampleDataButton.clicked.emit(False)
    p = widget._parameterNode
    assert p.inputVolume.GetName() == "DRDMChestCT" and p.inputVolume.GetImageData().GetDimensions()[2] > 1
    assert p.inputSegmentation.GetSegmentation().GetNumberOfSegments() == 7


def test_the_depth_slider_takes_its_range_and_default_from_the_engine(slicerApp):
    """The panel's depth range and default come from the engine's settings, not from the .ui file."""
    from drdm_engine.core.defaults import DEFAULT_DEPTH, max_depth

    widget = slicerApp().widget()
    slider = widget.ui.depthSlider
    assert (slider.maximum, widget._parameterNode.depth) == (max_depth(), DEFAULT_DEPTH)
    assert f"1-{max_depth()}" in slider.toolTip
    assert "79" not in UI.read_text() and "<double>64</double>" not in UI.read_text()
