"""A stand-in Slicer application around real parts, for tests of the module file ``DRDMSlicer.py``.

Real: MRML (slicer-core), ``slicer.util``, and Slicer's own ``slicer.parameterNodeWrapper`` of a
given release (``../shared/slicer/<tag>``). Stand-ins (``Testing/slicer_module/slicer_app``): the Qt/CTK widget
classes and ``.ui`` loader, ``slicer.app`` (version, ``processEvents``), ``slicer.modules.sequences``,
the ``ScriptedLoadableModule`` base classes, ``slicer.i18n`` and ``PyTorchUtils``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import ROOT

STANDIN = Path(__file__).with_name("slicer_app")
# ``../shared/slicer`` beside the repository (a worktree one level deeper looks one level up as well).
WRAPPERS = next((base / "shared" / "slicer" for base in (ROOT.parent, ROOT.parent.parent)
                 if (base / "shared" / "slicer").is_dir()), ROOT.parent / "shared" / "slicer")
WRAPPER_TAGS = ("v5.10.0", "v5.12.3")
WIDGET_CLASSES_ON_SLICER = ("qMRMLNodeComboBox", "qMRMLRangeWidget", "qMRMLSliderWidget", "qMRMLSpinBox",
                            "qSlicerWidget", "qMRMLWidget")
STANDIN_MODULES = ("qt", "ctk", "widgets", "app", "PyTorchUtils", "SampleData")


def _load(name: str, path: Path, package: bool = False):
    spec = importlib.util.spec_from_file_location(
        name, path / "__init__.py" if package else path,
        submodule_search_locations=[str(path)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class SlicerApp:
    """Installs the stand-in application (``version`` as (major, minor, patch), wrapper ``tag``) and
    loads the module file; ``close()`` removes every module it added."""

    def __init__(self, monkeypatch, scene, version=(5, 10, 0), tag: str = "v5.10.0") -> None:
        import slicer

        if not (WRAPPERS / tag / "parameterNodeWrapper" / "__init__.py").is_file():
            pytest.skip(f"../shared/slicer/{tag} (Slicer's parameterNodeWrapper) is not present")
        self.before = set(sys.modules)
        monkeypatch.syspath_prepend(str(STANDIN))
        monkeypatch.syspath_prepend(str(ROOT / "DRDMSlicer"))
        import qt
        from app import App, Modules
        from widgets import widgetClass

        qt.QSettings.store = {}

        self.app, self.modules = App(version), Modules()
        monkeypatch.setattr(slicer, "app", self.app, raising=False)
        monkeypatch.setattr(slicer, "modules", self.modules, raising=False)
        monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
        for name in WIDGET_CLASSES_ON_SLICER:
            monkeypatch.setattr(slicer, name, widgetClass(name), raising=False)
        self.i18n = _load("slicer.i18n", STANDIN / "i18n.py")
        _load("slicer.ScriptedLoadableModule", STANDIN / "ScriptedLoadableModule.py")
        self.wrapper = _load("slicer.parameterNodeWrapper", WRAPPERS / tag / "parameterNodeWrapper", package=True)
        monkeypatch.setattr(slicer, "parameterNodeWrapper", self.wrapper, raising=False)
        self.module = _load("DRDMSlicer", ROOT / "DRDMSlicer" / "DRDMSlicer.py")
        self.widgets = []

    def close(self) -> None:
        for widget in self.widgets:
            widget.cleanup()
        for name in set(sys.modules) - self.before:
            if name.startswith("slicer.") or name == "DRDMSlicer" or name in STANDIN_MODULES:
                del sys.modules[name]
        for name in ("slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"):
            sys.modules.pop(name, None)

    def moduleDescription(self):
        """The module class instantiated on a stand-in ``qSlicerScriptedLoadableModule``."""
        from widgets import widgetClass

        return self.module.DRDMSlicer(widgetClass("qSlicerScriptedLoadableModule")())

    def widget(self):
        """The module panel after ``setup()``, entered."""
        widget = self.module.DRDMSlicerWidget()
        widget.parent.isEntered = True
        self.widgets.append(widget)
        widget.setup()
        return widget


@pytest.fixture
def slicerApp(monkeypatch, scene):
    """Factory: ``slicerApp(version=(5, 10, 0), tag="v5.10.0")``."""
    made = []

    def make(version=(5, 10, 0), tag="v5.10.0") -> SlicerApp:
        made.append(SlicerApp(monkeypatch, scene, version, tag))
        return made[-1]

    yield make
    for app in made:
        app.close()
