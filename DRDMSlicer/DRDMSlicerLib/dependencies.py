"""Which Python packages the engine's worker still needs, found from package metadata (nothing is
imported into Slicer's process, torch least of all); no Qt."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re

from .engine import engineModule

MINIMUM_TORCH = tuple(engineModule("core/version.py").MINIMUM_TORCH)  # the engine's own declaration
# Python packages the engine needs beyond Slicer's own numpy and SimpleITK (import name -> pip name).
ENGINE_PACKAGES = {"slicerio": "slicerio", "yaml": "pyyaml", "tqdm": "tqdm", "PIL": "pillow"}


def installedVersion(distribution: str) -> str | None:
    """Version of an installed distribution (``importlib.metadata``), None when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versionTuple(version: str) -> tuple[int, ...]:
    """Leading numeric release parts: ``"2.11.0+cu128"`` -> ``(2, 11, 0)``."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("-")[0])[:3])


def torchRequirement() -> str:
    """The pip requirement for torch, e.g. ``>=2.2``."""
    return ">=" + ".".join(map(str, MINIMUM_TORCH))


def torchReady() -> bool:
    """True when torch is installed in at least ``MINIMUM_TORCH``."""
    version = installedVersion("torch")
    return version is not None and versionTuple(version) >= MINIMUM_TORCH


def missingPackages(names=ENGINE_PACKAGES) -> list[str]:
    """Pip names of the packages in ``names`` (import name -> pip name) that cannot be found."""
    return [pip for module, pip in names.items() if importlib.util.find_spec(module) is None]
