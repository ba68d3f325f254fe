"""Static checks of the module files that need no Slicer application: the panel's parameter names
match the parameter node, and the module imports no torch or Qt in its library."""
import ast
import xml.etree.ElementTree as ET

from conftest import ROOT

MODULE = ROOT / "DRDMSlicer" / "DRDMSlicer.py"
UI = ROOT / "DRDMSlicer" / "Resources" / "UI" / "DRDMSlicer.ui"


def parameterFields() -> set[str]:
    tree = ast.parse(MODULE.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DRDMSlicerParameterNode")
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}


def test_every_panel_parameter_is_a_parameter_node_field_and_back():
    names = {p.find("string").text for p in ET.parse(UI).iter("property") if p.get("name") == "SlicerParameterName"}
    assert names == parameterFields() == {"inputVolume", "inputSegmentation", "depth", "samples", "seed",
                                          "device", "model", "asSequence", "exportFolder"}


def test_panel_has_the_widgets_the_module_uses():
    widgets = {w.get("name") for w in ET.parse(UI).iter("widget")}
    used = {a.attr for a in ast.walk(ast.parse(MODULE.read_text()))
            if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Attribute) and a.value.attr == "ui"}
    assert used <= widgets, used - widgets


def test_library_imports_neither_qt_nor_torch():
    for path in (ROOT / "DRDMSlicer" / "DRDMSlicerLib").glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert not imported & {"qt", "ctk", "PythonQt", "torch", "drdm_engine"}, (path.name, imported)
