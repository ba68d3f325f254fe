"""What Slicer's own process reads of the engine without importing it (torch stays out of Slicer): the
engine's torch-free modules (its settings and its model registry), loaded from their files."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .worker import engineSearchPath


def engineModule(relativePath: str, engineFolder: str | None = None) -> ModuleType:
    """The engine's self-contained module ``drdm_engine/<relativePath>`` (e.g. ``core/defaults.py``), loaded
    from the engine beside the module (or ``engineFolder``) under a private name."""
    path = (Path(engineFolder or engineSearchPath()) / "drdm_engine" / relativePath).resolve()
    name = f"_drdmSlicerEngine_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or not path.is_file():
        raise FileNotFoundError(f"the DRDM engine file {path} is missing; reinstall the DRDMSlicer extension")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
