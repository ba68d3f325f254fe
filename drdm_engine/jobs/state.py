"""What a resumable run keeps in its output folder so that rerunning the same command continues it:
``.drdm_state/run.json`` (the run's signature: its inputs — every case's files with their size and
modification time — and its settings; written when its first case is published) and
``.drdm_state/cases/<case>.json`` (each finished case's manifest record, written after its files are
in place). A rerun with the same signature skips recorded cases and redoes any other."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..core.errors import DRDMError
from ..io.write import write_json, writing
from .cases import Dataset
from .settings import Job

STATE = ".drdm_state"


def _file_facts(path: str) -> dict:
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}


def run_signature(dataset: Dataset, job: Job) -> dict:
    """What a resumed run must share with the interrupted one: the settings that decide the outputs, and
    every case's ID and files (paths, sizes, modification times: an edited input is a different run)."""
    cases = [{"id": c.id, "channels": [_file_facts(p) for p in c.channels],
              "labels": _file_facts(c.labels) if c.labels else None} for c in dataset.cases]
    return {"dataset": os.path.abspath(dataset.root), "kind": dataset.kind, "job": job.signature(), "cases": cases}


def record_files(record: dict) -> set[str]:
    """The files (relative paths) a case's manifest record lists: its samples', its original's, its pairs'."""
    entries = [*record.get("samples", []), *([record["originals"]] if record.get("originals") else [])]
    files = {p for e in entries for p in (*e.get("images", []), e.get("labels"), e.get("field"), e.get("preview")) if p}
    return files | {p["displacement_field"] for p in record.get("pairs", [])}


class RunState:
    """The resume state of the run with ``signature`` in ``out``."""

    def __init__(self, out: Path, signature: dict, overwrite: bool):
        self.folder = Path(out) / STATE
        self.signature, self.overwrite = signature, overwrite
        self.discarded: set[str] = set()
        """Files an earlier run of other settings recorded, when ``overwrite`` discarded its state."""

    @property
    def run_file(self) -> Path:
        return self.folder / "run.json"

    def record_path(self, case_id: str) -> Path:
        return self.folder / "cases" / f"{case_id}.json"

    def _recorded(self) -> dict | None:
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, ValueError):
            return None

    def resumes(self) -> bool:
        """Whether ``out`` holds an unfinished run of this signature; another run's state is refused with
        one line (with ``overwrite`` it does not count: :meth:`prepare` discards it)."""
        recorded = self._recorded()
        if recorded is None or recorded == self.signature:
            return recorded is not None
        if self.overwrite:
            return False
        changed = sorted(k for k in self.signature if recorded.get(k) != self.signature[k])
        raise DRDMError(f"output folder {self.folder.parent} holds another dataset run ({', '.join(changed)} "
                        f"differ); rerun with the same inputs and settings to resume it, add --overwrite to "
                        f"replace it, or choose another --out")

    def prepare(self) -> bool:
        """Under the folder's lock: True when resuming; else the state of any earlier run is discarded (the
        files it recorded are remembered in :attr:`discarded`; they stay, as every file this run does not
        write)."""
        if self.resumes():
            return True
        records = self.folder / "cases"
        for path in sorted(records.glob("*.json")) if records.is_dir() else ():
            try:
                self.discarded |= record_files(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, AttributeError, KeyError):
                continue
        shutil.rmtree(self.folder, ignore_errors=True)
        return False

    def finished(self, case_ids: list[str]) -> set[str]:
        return {c for c in case_ids if self.record_path(c).is_file()}

    def record(self, case_id: str, record: dict) -> None:
        """Record a finished case (its files already published)."""
        with writing(self.record_path(case_id)):
            if not self.run_file.is_file():
                self.record_path(case_id).parent.mkdir(parents=True, exist_ok=True)
                write_json(self.signature, self.run_file)
            write_json(record, self.record_path(case_id))

    def read(self, case_id: str) -> dict:
        return json.loads(self.record_path(case_id).read_text())
