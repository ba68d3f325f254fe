"""DRDM generation and export for MRML nodes, usable headless, in batch scripts and from Slicer's
Python console; no Qt.

Example (Slicer Python console)::

    from DRDMSlicerLib import DRDMLogic
    results = DRDMLogic().generate(volumeNode, segmentationNode, samples=3, depth=32, seed=1)
    DRDMLogic().export(results, "augmented")
"""
from __future__ import annotations

import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import slicer

from .display import showSample
from .engine import engineModule
from .export import export as exportResults
from .inputs import writeInputs
from .results import SampleResult, loadResults
from .worker import EngineJob, augmentCommand, engineSearchPath, workerPython

_ENGINE_DEFAULTS = engineModule("core/defaults.py")
DEFAULT_DEPTH = _ENGINE_DEFAULTS.DEFAULT_DEPTH
MAX_DEPTH = _ENGINE_DEFAULTS.max_depth()
DEVICES = ("auto", "cpu", "cuda")
EVENT_SECONDS = 0.02  # how often generate() lets Slicer process its events while it waits

ProgressCallback = Callable[[float, str], None]


@dataclass
class GenerationSettings:
    """What to generate: sample count, diffusion depth T0 (1 … the engine's :data:`MAX_DEPTH`), seed, model (path, ``none`` for
    diffusion only, or None for the engine's bundled model) and device."""

    samples: int = 1
    depth: int = DEFAULT_DEPTH
    seed: int | None = None
    model: str | None = None
    device: str = "auto"

    def checked(self) -> "GenerationSettings":
        """A copy with a concrete seed; raises ValueError with one line for bad values."""
        if not 1 <= int(self.samples) <= 100:
            raise ValueError(f"samples must be between 1 and 100, got {self.samples}")
        if not 1 <= int(self.depth) <= MAX_DEPTH:
            raise ValueError(f"depth must be between 1 and {MAX_DEPTH}, got {self.depth}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        model = (self.model or "").strip() or None
        if model and model != "none" and Path(model).is_dir():
            raise ValueError(f"model must be a checkpoint file (.pt), not a folder: {model}")
        if model and model != "none" and not Path(model).is_file():
            raise ValueError(f"model file not found: {model}")
        seed = random.SystemRandom().randrange(2**31) if self.seed is None else int(self.seed)
        return GenerationSettings(int(self.samples), int(self.depth), seed, model, self.device)


class Generation:
    """A generation running in a worker process; poll it, cancel it, or finish it to get the nodes."""

    def __init__(self, volumeNode, segmentationNode, settings: GenerationSettings,
                 pythonExecutable: str | None = None, engineModule: list[str] | None = None) -> None:
        self.volumeNode = volumeNode
        self.segmentationNode = segmentationNode
        self.settings = settings.checked()
        self.results: list[SampleResult] | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="drdm_"))
        try:
            imagePath, labelsPath = writeInputs(volumeNode, segmentationNode, self._folder)
            command = augmentCommand(pythonExecutable or workerPython(), str(imagePath),
                                     str(labelsPath) if labelsPath else None, str(self._folder / "out"),
                                     self.settings.samples, self.settings.depth, self.settings.seed,
                                     self.settings.model, self.settings.device)
            if engineModule is not None:
                command[1:3] = engineModule
            self.job = EngineJob(command, engineSearchPath() if engineModule is None else None)
        except Exception:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise

    @property
    def fraction(self) -> float:
        return self.job.fraction

    @property
    def message(self) -> str:
        return self.job.message

    def running(self) -> bool:
        return self.job.running()

    def log(self) -> list[str]:
        """The worker's log lines so far (progress lines excluded)."""
        return self.job.log()

    def cancel(self) -> None:
        """Kill the worker and delete its files; no nodes are created."""
        self.job.cancel()
        shutil.rmtree(self._folder, ignore_errors=True)

    def finish(self) -> list[SampleResult]:
        """Wait for the worker, then load all samples into the input volume's scene (all or nothing) and
        show the first one."""
        try:
            code = self.job.wait()
            if self.job.cancelled:
                raise RuntimeError("generation was cancelled")
            if code != 0:
                raise RuntimeError(self.job.errorMessage())
            settings = {"depth": self.settings.depth, "seed": self.settings.seed,
                        "model": self.settings.model or "bundled", "device": self.settings.device,
                        "input": self.volumeNode.GetName()}
            self.results = loadResults(self._folder / "out" / "manifest.json", self.volumeNode,
                                       self.segmentationNode, settings=settings)
            showSample(self.results, 0)
            return self.results
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


class DRDMLogic:
    """Generate DRDM samples of a volume (and segmentation) and export them."""

    def __init__(self, pythonExecutable: str | None = None, engineModule: list[str] | None = None) -> None:
        """``pythonExecutable``: the worker's Python (default: PythonSlicer in Slicer, else this one);
        ``engineModule``: replaces ``-m drdm_engine`` in the worker command (tests use a stand-in)."""
        self.pythonExecutable = pythonExecutable
        self.engineModule = engineModule

    def start(self, volumeNode, segmentationNode=None, samples: int = 1, depth: int = DEFAULT_DEPTH,
              seed: int | None = None, model: str | None = None, device: str = "auto") -> Generation:
        """Start a generation in a worker process and return at once."""
        return Generation(volumeNode, segmentationNode, GenerationSettings(samples, depth, seed, model, device),
                          self.pythonExecutable, self.engineModule)

    def generate(self, volumeNode, segmentationNode=None, samples: int = 1, depth: int = DEFAULT_DEPTH,
                 seed: int | None = None, model: str | None = None, progress: ProgressCallback | None = None,
                 device: str = "auto", pollSeconds: float = 0.2) -> list[SampleResult]:
        """Generate ``samples`` deformations and block until they are loaded; one result per sample.

        ``progress(fraction 0..1, text)`` is called every ``pollSeconds`` while the worker runs; raising
        from it cancels. Inside Slicer the application keeps processing its events while this waits.
        """
        generation = self.start(volumeNode, segmentationNode, samples, depth, seed, model, device)
        app = getattr(slicer, "app", None)
        try:
            reported = 0.0
            while generation.running():
                if progress is not None and time.monotonic() - reported >= pollSeconds:
                    progress(generation.fraction, generation.message)
                    reported = time.monotonic()
                if app is not None:
                    app.processEvents()
                time.sleep(EVENT_SECONDS if app is not None else pollSeconds)
        except BaseException:
            generation.cancel()
            raise
        results = generation.finish()
        if progress is not None:
            progress(1.0, "done")
        return results

    @staticmethod
    def export(results: list[SampleResult], folder) -> Path:
        """Export results as augmented cases into ``folder``; returns the manifest path."""
        return exportResults(results, folder)
