"""Static checks of the module files that need no Slicer application: the panel's parameter names
match the parameter node, and the module imports no torch or Qt in its library."""
import ast
import json
import re
import xml.etree.ElementTree as ET

from conftest import ROOT

MODULE = ROOT / "DRDMSlicer" / "DRDMSlicer.py"
UI = ROOT / "DRDMSlicer" / "Resources" / "UI" / "DRDMSlicer.ui"


def parameterFields() -> set[str]:
    tree = ast.parse(MODULE.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DRDMSlicerParameterNode")
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}


def test_every_panel_parameter_is_a_parameter_node_field_and_back():
    """``model`` is set by the model selector (its list holds files found at run time), not bound."""
    names = {p.find("string").text for p in ET.parse(UI).iter("property") if p.get("name") == "SlicerParameterName"}
    assert names | {"model"} == parameterFields() == {"inputVolume", "inputSegmentation", "depth", "samples",
                                                      "seed", "device", "model", "asSequence", "exportFolder"}


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


NEWER_THAN_3_10 = {"tomllib", "typing.Self", "typing.LiteralString", "typing.Never", "typing.assert_never",
                   "typing.reveal_type", "typing.TypeVarTuple", "typing.Unpack", "typing.NotRequired",
                   "typing.Required", "typing.override", "enum.StrEnum", "datetime.UTC", "exceptiongroup"}


def importedNames(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_engine_uses_nothing_newer_than_python_3_10():
    """pyproject promises Python >= 3.10: syntax and standard-library names of 3.11+ are refused."""
    for path in (ROOT / "drdm_engine").rglob("*.py"):
        tree = ast.parse(path.read_text(), feature_version=(3, 10))
        assert not importedNames(tree) & NEWER_THAN_3_10, path


def test_module_files_import_on_the_python_39_of_older_slicers():
    """Slicer 5.6/5.8 (Python 3.9) must get as far as the version check: 3.9 syntax, and annotations
    with ``X | Y`` only where ``from __future__ import annotations`` keeps them unevaluated."""
    for path in [MODULE, *(ROOT / "DRDMSlicer" / "DRDMSlicerLib").glob("*.py")]:
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in tree.body)
        annotations = [n.annotation for n in ast.walk(tree) if isinstance(n, (ast.arg, ast.AnnAssign)) and n.annotation]
        annotations += [n.returns for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.returns]
        unions = [a for a in annotations if any(isinstance(b, ast.BinOp) and isinstance(b.op, ast.BitOr)
                                                  for b in ast.walk(a))]
        assert future or not unions, path
        assert not importedNames(tree) & (NEWER_THAN_3_10 | {"typing.TypeAlias", "typing.ParamSpec"}), path


def cmakeSetting(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text())
    assert match, name
    return match.group(1)


def test_extension_files_a_reviewer_needs_agree():
    """LICENSE (the licence pyproject declares), the ExtensionsIndex entry, and the CMake metadata:
    PyTorch as the build dependency, the minimum Slicer stated, screenshots that exist."""
    license = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license and "Version 2.0, January 2004" in license
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    entry = json.loads((ROOT / "DRDMSlicer.json").read_text())
    assert entry["build_dependencies"] == ["PyTorch"] == cmakeSetting("EXTENSION_DEPENDS").split()
    assert entry["category"] == cmakeSetting("EXTENSION_CATEGORY")
    assert entry["scm_url"].removesuffix(".git") == cmakeSetting("EXTENSION_HOMEPAGE")
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert "3D Slicer 5.10 or later" in cmakeSetting("EXTENSION_DESCRIPTION")
    for url in cmakeSetting("EXTENSION_SCREENSHOTURLS").split():
        assert (ROOT / url.split("/main/", 1)[1]).is_file(), url
