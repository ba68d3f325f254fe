"""Tiny stand-in Qt/CTK/qMRML widget classes, made on demand by class name (``qt.QSpinBox``,
``ctk.ctkSliderWidget``, ``slicer.qMRMLNodeComboBox``): one distinct class per name, as Slicer's
``parameterNodeWrapper`` picks its GUI connectors by ``type(widget)``. Each widget keeps Qt properties
as attributes, dynamic properties for ``property()``, child widgets, and signals (``xxxChanged``,
``clicked``, ...) that tests emit."""
from __future__ import annotations

import inspect

SIGNALS = {"clicked", "toggled", "timeout", "cellClicked", "currentRowChanged", "itemSelectionChanged",
           "contentsCollapsed", "textActivated", "activated"}


class Signal:
    """A Qt signal: ``connect``, ``disconnect``, ``emit``."""

    def __init__(self) -> None:
        self.slots: list = []

    def connect(self, slot) -> None:
        self.slots.append(slot)

    def disconnect(self, slot=None) -> None:
        self.slots = [s for s in self.slots if slot is not None and s != slot]

    def emit(self, *args) -> None:
        """Call every slot; like PythonQt, a slot taking fewer arguments gets the first ones."""
        for slot in list(self.slots):
            parameters = inspect.signature(slot).parameters.values()
            if any(p.kind == p.VAR_POSITIONAL for p in parameters):
                slot(*args)
            else:
                slot(*args[:sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)])


class Widget:
    """Stand-in ``QWidget``: attributes are Qt properties; unknown ``...Changed`` names are signals."""

    def __init__(self, textOrParent=None, parent=None) -> None:
        text = textOrParent if isinstance(textOrParent, str) else ""
        parent = parent if isinstance(textOrParent, str) else textOrParent
        self.__dict__.update(_dynamic={}, _children=[], name="", visible=True, enabled=True, toolTip="",
                             text=text, _parent=parent)
        if parent is not None:
            parent._children.append(self)

    def __getattr__(self, name: str):
        if name.endswith("Changed") or name in SIGNALS:
            signal = Signal()
            self.__dict__[name] = signal
            return signal
        raise AttributeError(f"stand-in {type(self).__name__} has no attribute {name!r}")

    def isWidgetType(self) -> bool:
        return True

    def className(self) -> str:
        return type(self).__name__

    def property(self, name: str):
        return self._dynamic.get(name)

    def setProperty(self, name: str, value) -> None:
        self._dynamic[name] = value

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, cls=None) -> list:
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found += child.findChildren(cls)
        return found

    def connect(self, signature: str, slot) -> None:
        """PythonQt's string form: ``widget.connect("clicked(bool)", slot)``."""
        getattr(self, signature.split("(")[0]).connect(slot)

    def setVisible(self, visible: bool) -> None:
        self.visible = visible

    def isVisible(self) -> bool:
        return self.visible

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = enabled

    def setText(self, text: str) -> None:
        self.text = text

    def setToolTip(self, text: str) -> None:
        self.toolTip = text

    def setMRMLScene(self, scene) -> None:
        self.mrmlScene = scene

    def setValue(self, value) -> None:
        self.value = value

    def setRange(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def setMinimum(self, value) -> None:
        self.minimum = value

    def setMaximum(self, value) -> None:
        self.maximum = value

    # node selectors
    def currentNode(self):
        return self.__dict__.get("_node")

    def setCurrentNode(self, node) -> None:
        if node is not self.currentNode():
            self._node = node
            self.currentNodeChanged.emit(node)

    # combo boxes and text areas
    def blockSignals(self, block: bool) -> None:
        self._blocked = block

    def _emit(self, name: str, *args) -> None:
        if not self.__dict__.get("_blocked"):
            getattr(self, name).emit(*args)

    def clear(self) -> None:
        self.items, self.data, self.plainText = [], [], ""
        self.currentIndex = -1

    def addItem(self, text: str, data=None) -> None:
        self.__dict__.setdefault("items", []).append(text)
        self.__dict__.setdefault("data", []).append(data)
        if self.__dict__.get("currentIndex", -1) < 0:
            self.setCurrentIndex(0)

    def count(self) -> int:
        return len(self.__dict__.get("items", []))

    def itemText(self, index: int) -> str:
        return self.items[index]

    def itemData(self, index: int):
        return self.data[index] if 0 <= index < len(self.__dict__.get("data", [])) else None

    def setCurrentIndex(self, index: int) -> None:
        if index != self.__dict__.get("currentIndex", -1):
            self.currentIndex = index
            self._emit("currentIndexChanged", index)

    # layouts, text areas and tables
    def addWidget(self, widget) -> None:
        self._children.append(widget)

    def appendPlainText(self, text: str) -> None:
        self.plainText = "\n".join(filter(None, [self.__dict__.get("plainText", ""), text]))

    def clearContents(self) -> None:
        self.cells = {}

    def setRowCount(self, rows: int) -> None:
        self.rowCount = rows
        self.cells = {k: v for k, v in self.__dict__.get("cells", {}).items() if k[0] < rows}

    def setColumnCount(self, columns: int) -> None:
        self.columnCount = columns

    def setHorizontalHeaderLabels(self, labels) -> None:
        self.headers = list(labels)

    def setItem(self, row: int, column: int, item) -> None:
        self.__dict__.setdefault("cells", {})[(row, column)] = item

    def item(self, row: int, column: int):
        return self.__dict__.get("cells", {}).get((row, column))

    def selectRow(self, row: int) -> None:
        self.currentRow = row


class Item:
    """Stand-in ``QTableWidgetItem``."""

    def __init__(self, text: str = "") -> None:
        self.text_ = text

    def text(self) -> str:
        return self.text_


_classes: dict[str, type] = {}


def widgetClass(name: str) -> type:
    """The one stand-in class named ``name`` (created on first use)."""
    if name not in _classes:
        _classes[name] = type(name, (Widget,), {})
    return _classes[name]
