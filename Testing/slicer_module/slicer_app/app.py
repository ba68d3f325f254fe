"""Stand-ins for ``slicer.app`` and ``slicer.modules`` (Testing only)."""
import slicer


class LayoutManager:
    def resetSliceViews(self) -> None:
        pass


class App:
    """``slicer.app`` of a given version; counts ``processEvents`` calls."""

    def __init__(self, version: tuple) -> None:
        self.majorVersion, self.minorVersion, self.patchVersion = version
        self.applicationVersion = ".".join(map(str, version))
        self.processedEvents = 0
        self.connections = []

    def connect(self, signature: str, slot) -> None:
        self.connections.append((signature, slot))

    def processEvents(self) -> None:
        self.processedEvents += 1

    def testingEnabled(self) -> bool:
        return True

    def setOverrideCursor(self, cursor) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass

    def layoutManager(self) -> LayoutManager:
        return LayoutManager()


class SequencesModule:
    """``slicer.modules.sequences``: records which browser the toolbar shows."""

    def __init__(self) -> None:
        self.shown = []
        self._logic = None

    def logic(self):
        if self._logic is None:
            self._logic = slicer.vtkSlicerSequencesLogic()
            self._logic.SetMRMLScene(slicer.mrmlScene)
        return self._logic

    def showSequenceBrowser(self, browserNode) -> None:
        self.shown.append(browserNode)


class Modules:
    def __init__(self) -> None:
        self.sequences = SequencesModule()
