"""Medical image file names and formats: the suffixes DRDM reads, a path's full suffix and stem, and the
folder a path will live in (no SimpleITK, no torch)."""
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


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself, or its nearest ancestor that exists (where a folder about to be created will live)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
