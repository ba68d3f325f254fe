"""The module file in a stand-in Slicer application (``slicer_app_env``): the panel binds with Slicer's
own parameterNodeWrapper of 5.10 and 5.12, refuses an older Slicer, and behaves as users expect."""
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("slicer")

from conftest import ROOT  # noqa: E402
from slicer_app_env import WRAPPER_TAGS, slicerApp  # noqa: E402,F401

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
