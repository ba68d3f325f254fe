"""Which 3D Slicer the module supports; no Qt. Kept importable by the Python 3.9 of Slicer 5.6/5.8 so that
an older Slicer gets one clear line instead of a crash."""
from __future__ import annotations

MINIMUM_SLICER = (5, 10)


def slicerVersionProblem(major: int, minor: int) -> str | None:
    """One line saying which Slicer is needed, or None when ``major.minor`` is supported."""
    if (int(major), int(minor)) >= MINIMUM_SLICER:
        return None
    needed = ".".join(map(str, MINIMUM_SLICER))
    return (f"DRDM Augmentation needs 3D Slicer {needed} or later (this is {major}.{minor}); "
            f"install a current Slicer from https://download.slicer.org")
