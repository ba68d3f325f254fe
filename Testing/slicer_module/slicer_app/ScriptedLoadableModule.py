"""Stand-in for ``slicer.ScriptedLoadableModule`` (Testing only): the four base classes, with the
parameter node kept as a real singleton ``vtkMRMLScriptedModuleNode`` in ``slicer.mrmlScene``."""
import inspect
import unittest
from pathlib import Path

import slicer
from widgets import widgetClass


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent if parent is not None else widgetClass("qSlicerScriptedLoadableModuleWidget")()
        self.layout = widgetClass("QVBoxLayout")()
        self.moduleName = type(self).__name__[: -len("Widget")]

    def resourcePath(self, filename: str) -> str:
        return str(Path(inspect.getfile(type(self))).parent / "Resources" / filename)

    def setup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__[: -len("Logic")]

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=1000) -> None:
        pass
