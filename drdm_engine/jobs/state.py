"""What a resumable run keeps in its output folder so that rerunning the same command continues it:
``.drdm_state/run.json`` (the run's inputs and settings, written when its first case is published) and
``.drdm_state/cases/<case>.json`` (each finished case's manifest record, written after its files are
in place). A rerun skips recorded cases and redoes any other."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..core.errors import DRDMError
from ..io.write import write_json

STATE = ".drdm_state"


class RunState:
    """The resume state of the run with ``signature`` in ``out``."""

    def __init__(self, out: Path, signature: dict, overwrite: bool):
        self.folder = Path(out) / STATE
        self.signature, self.overwrite = signature, overwrite

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
        """Under the folder's lock: True when resuming; else the state of any earlier run is discarded."""
        if self.resumes():
            return True
        shutil.rmtree(self.folder, ignore_errors=True)
        return False

    def finished(self, case_ids: list[str]) -> set[str]:
        return {c for c in case_ids if self.record_path(c).is_file()}

    def record(self, case_id: str, record: dict) -> None:
        """Record a finished case (its files already published)."""
        if not self.run_file.is_file():
            self.record_path(case_id).parent.mkdir(parents=True, exist_ok=True)
            write_json(self.signature, self.run_file)
        write_json(record, self.record_path(case_id))

    def read(self, case_id: str) -> dict:
        return json.loads(self.record_path(case_id).read_text())
