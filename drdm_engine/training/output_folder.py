"""The output folder of a training run: refuse one that cannot be written or that holds another run.

A run writes only its own files (``names``: checkpoint, model, logs) into ``out``. An ``out`` holding
any of them belongs to an earlier run: it is continued with ``resume`` or replaced with ``overwrite``
(which removes those files only, nothing else in the folder), never silently mixed. A run in progress
holds a lock on its folder, so a second run into it is refused instead of replacing its files.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..core.errors import DRDMError
from ..jobs.runfolder import lock_folder, unlock_folder

LOCK_NAME = ".drdm-train.lock"


def check_run_folder(out: Path, names: tuple[str, ...], resume: str, overwrite: bool) -> None:
    """Refuse (one line) an ``out`` that is a file, lies under a file, has a folder where a run file goes,
    or holds an earlier run's files unless ``overwrite`` is given or ``resume`` (a checkpoint path, ``""``
    for none) is that run's own checkpoint ``out/names[0]``. Writes nothing."""
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise DRDMError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    blocked = [name for name in names if (out / name).exists() and not (out / name).is_file()]
    if blocked:
        raise DRDMError(f"--out {out} has a folder named {blocked[0]} where training writes a file; "
                        f"choose another --out")
    earlier = [name for name in names if (out / name).exists()]
    own = bool(resume) and Path(resume).resolve() == (out / names[0]).resolve()
    if earlier and not (own or overwrite):
        raise DRDMError(f"--out {out} already holds a training run ({', '.join(earlier)}); continue it with "
                        f"--resume {out / names[0]}, replace it with --overwrite, or choose another --out")


def open_run_folder(out: Path, names: tuple[str, ...], overwrite: bool) -> None:
    """Create ``out``, prove it writable (a temporary file, removed) and, with ``overwrite``, remove the
    earlier run's files ``names`` (only those)."""
    _make_folder(out)
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise DRDMError(f"cannot write into --out {out}: {exc.strerror or exc}; choose a writable folder") from exc
    if overwrite:
        for name in names:
            (out / name).unlink(missing_ok=True)


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DRDMError(f"cannot write into --out {out}: {exc.strerror or exc}; choose a writable folder") from exc


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the OS lock of ``out`` (``out/.drdm-train.lock``, :func:`runfolder.lock_folder`; released by
    the system if the process dies) for a whole run: a folder locked by another run is refused with one
    line. On exit the lock file is removed, and ``out`` too when this run created it and left it empty."""
    created = not out.exists()
    _make_folder(out)
    try:
        handle = lock_folder(out, LOCK_NAME, "training run")
    except OSError as exc:
        raise DRDMError(f"cannot write into --out {out}: {exc.strerror or exc}; choose a writable folder") from exc
    try:
        yield
    finally:
        unlock_folder(handle)
        if created and not any(out.iterdir()):
            out.rmdir()
