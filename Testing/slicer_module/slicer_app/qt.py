"""Stand-in for PythonQt's ``qt`` module (Testing only): widget classes by name, QTimer, QSettings,
and a QUiLoader that builds stand-in widgets from a Qt Designer ``.ui`` file."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from widgets import Item, Signal, Widget, _classes, widgetClass

_classes["QWidget"] = Widget
QWidget = Widget
QTableWidgetItem = Item


class Qt:
    WaitCursor = 3
    Vertical = 2


class QMessageBox:
    Ok, Cancel, Critical, Warning, Information, Question = 0x400, 0x400000, 3, 2, 1, 4


class QTimer:
    def __init__(self) -> None:
        self.interval, self.active, self.timeout = 0, False, Signal()

    def setInterval(self, msec: int) -> None:
        self.interval = msec

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def isActive(self) -> bool:
        return self.active

    def connect(self, signature: str, slot) -> None:
        getattr(self, signature.split("(")[0]).connect(slot)


class QSettings:
    """Application settings; ``store`` outlives instances like the settings file does."""

    store: dict = {}

    def value(self, key: str, default=None):
        return self.store.get(key, default)

    def setValue(self, key: str, value) -> None:
        self.store[key] = value

    def contains(self, key: str) -> bool:
        return key in self.store


class QFileDialog:
    """``getOpenFileName`` returns ``answer`` (set by a test) and records its calls."""

    answer = ""
    calls = []

    @staticmethod
    def getOpenFileName(*args) -> str:
        QFileDialog.calls.append(args)
        return QFileDialog.answer


class QFile:
    ReadOnly = 1

    def __init__(self, path) -> None:
        self.path = str(path)

    def exists(self) -> bool:
        import os

        return os.path.isfile(self.path)

    def open(self, mode) -> bool:
        return True


def _value(node):
    kind = node.tag
    if kind == "string":
        return node.text or ""
    if kind == "number":
        return int(node.text)
    if kind == "double":
        return float(node.text)
    if kind == "bool":
        return node.text == "true"
    if kind == "stringlist":
        return [s.text or "" for s in node]
    return node.text


class QUiLoader:
    """Builds the widget tree of a ``.ui`` file: classes by name, properties, dynamic properties."""

    def load(self, qfile: QFile):
        root = ET.parse(qfile.path).getroot().find("widget")
        return self._build(root, None)

    def _build(self, element, parent):
        widget = widgetClass(element.get("class"))(parent)
        widget.name = element.get("name") or ""
        for prop in element.findall("property"):
            value = _value(prop[0])
            if prop.get("stdset") == "0":
                widget.setProperty(prop.get("name"), value)
            else:
                setattr(widget, prop.get("name"), value)
        for child in element.iter("widget"):
            if child is not element and self._parentWidget(element, child):
                self._build(child, widget)
        return widget

    @staticmethod
    def _parentWidget(element, child) -> bool:
        """True when ``child`` is a direct widget descendant of ``element`` (through layouts only)."""
        def walk(node):
            for sub in node:
                if sub is child:
                    return True
                if sub.tag != "widget" and walk(sub):
                    return True
            return False
        return walk(element)


def __getattr__(name: str):
    if name.startswith("Q"):
        return widgetClass(name)
    raise AttributeError(name)
