"""Medical image file names and formats: the suffixes DRDM reads, a path's full suffix and stem."""
from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def suffix_of(path: str | os.PathLike) -> str:
    """Full medical-image suffix (``.nii.gz``, ``.seg.nrrd``, ``.nrrd``, ...), lower case."""
    name = Path(path).name.lower()
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def stem_of(path: str | os.PathLike) -> str:
    """File name without its medical-image suffix (a folder's name for a DICOM folder)."""
    name = Path(path).name
    suffix = suffix_of(path)
    return name[: len(name) - len(suffix)] if suffix and name.lower().endswith(suffix) else Path(path).stem
