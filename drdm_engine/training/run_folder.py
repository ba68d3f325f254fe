"""The output folder of a training run: refuse one that cannot be written or that holds another run.

A run writes only its own files (``names``: checkpoint, model, logs) into ``out``. An ``out`` holding
any of them belongs to an earlier run: it is continued with ``resume`` or replaced with ``overwrite``
(which removes those files only, nothing else in the folder), never silently mixed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import DRDMError


def check_run_folder(out: Path, names: tuple[str, ...], resume: bool, overwrite: bool) -> None:
    """Refuse (one line) an ``out`` that is a file, lies under a file, has a folder where a run file goes,
    or holds an earlier run's files while neither ``resume`` nor ``overwrite`` is given. Writes nothing."""
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise DRDMError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    blocked = [name for name in names if (out / name).exists() and not (out / name).is_file()]
    if blocked:
        raise DRDMError(f"--out {out} has a folder named {blocked[0]} where training writes a file; "
                        f"choose another --out")
    earlier = [name for name in names if (out / name).exists()]
    if earlier and not (resume or overwrite):
        raise DRDMError(f"--out {out} already holds a training run ({', '.join(earlier)}); continue it with "
                        f"--resume {out / names[0]}, replace it with --overwrite, or choose another --out")


def open_run_folder(out: Path, names: tuple[str, ...], overwrite: bool) -> None:
    """Create ``out``, prove it writable (a temporary file, removed) and, with ``overwrite``, remove the
    earlier run's files ``names`` (only those)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise DRDMError(f"cannot write into --out {out}: {exc.strerror or exc}; choose a writable folder") from exc
    if overwrite:
        for name in names:
            (out / name).unlink(missing_ok=True)
