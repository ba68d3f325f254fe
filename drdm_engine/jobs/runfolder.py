"""One run's output folder: refused while another run uses it, written in a private staging folder,
moved into place at the end (manifest last), and on failure or a signal left as it was found.

Layout while a run works in ``out``: ``out/.drdm-lock`` (an OS lock held by the running process;
released by the OS if the process dies) and ``out/.drdm-staging-<pid>-*/`` (this run's files). Only
files this run wrote are ever removed; folders it created are removed only when empty.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..core.errors import DRDMError

LOCK_NAME = ".drdm-lock"
STAGING_PREFIX = ".drdm-staging-"
INTERNAL_PREFIX = ".drdm"  # the lock, staging folders and a dataset run's .drdm_state
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP turned into an interrupt, so that every cleanup that handles Ctrl-C runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (a ``KeyboardInterrupt``); a
    no-op outside the main thread (only it may set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_terminated) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends (the swap into place is not cut in the middle)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, *STOP_SIGNALS}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _try_lock(handle) -> bool:
    """Non-blocking exclusive OS lock on an open file; released when the process exits."""
    try:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
    except OSError:
        return False
    return True


def unwritable(out: Path, exc: OSError) -> DRDMError:
    return DRDMError(f"cannot write to output folder {out}: {exc.strerror or exc}; choose a writable --out")


def lock_folder(out: Path, name: str = LOCK_NAME, holder: str = "drdm run"):
    """Take the OS lock of folder ``out`` (file ``name``, holding the owner's pid); refused with one line
    naming the ``holder`` while another run holds it. Returns the open lock file, for :func:`unlock_folder`."""
    path = out / name
    handle = open(path, "a+")
    if not _try_lock(handle) or not path.exists() or os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise DRDMError(f"output folder {out} is in use by another {holder} (pid {owner}); wait for it to "
                        f"finish or choose another --out")
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def unlock_folder(handle) -> None:
    """Remove and release a lock taken by :func:`lock_folder`."""
    Path(handle.name).unlink(missing_ok=True)
    handle.close()


@dataclass(frozen=True)
class Staging:
    """A run's private staging folder ``root`` inside its output folder ``out`` (picklable: worker
    processes stage and publish their cases through it)."""

    root: Path
    out: Path

    def case(self, name: str) -> Path:
        """A fresh, empty folder ``name`` in the staging folder (for one case's files)."""
        folder = self.root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        return folder

    def publish(self, folder: Path) -> None:
        """Move every file below the staged ``folder`` to the same relative place in ``out`` (atomic
        renames on one file system; folders created as needed), then remove ``folder``; a signal waits
        until all are in place."""
        with _signals_held():
            self.move(folder)

    def move(self, folder: Path, last: str | None = None) -> None:
        """:meth:`publish` for a caller that already holds the stop signals (the file ``last`` moved after
        all others): every target is checked first (a folder in a file's place is refused before anything
        moves)."""
        files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: (p.parent == folder and
                                                                                     p.name == last, str(p)))
        targets = [self.out / path.relative_to(folder) for path in files]
        blocked = next((t for t in targets if t.is_symlink() or (t.exists() and not t.is_file())), None)
        if blocked is not None:
            raise DRDMError(f"output folder {self.out} holds '{blocked.relative_to(self.out)}', which is not a "
                            f"regular file, where this run writes one; move it away or choose another --out")
        for path, target in zip(files, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        shutil.rmtree(folder)


class RunFolder:
    """The output folder ``out`` of one run; ``is_output(name)`` tells the top-level names it writes.

    :meth:`open` checks and locks ``out`` and returns the :class:`Staging` folder to write into (a
    resumable run publishes each case from it as the case finishes); :meth:`commit` moves everything else
    into ``out``
    (``last`` after all others); :meth:`abort` removes what this run has not published. ``overwrite``:
    ``out`` may already hold files (same-named ones are replaced, others never touched); ``resumes()``:
    whether ``out`` holds an unfinished run of the same settings, which may be continued without it."""

    def __init__(self, out: Path, overwrite: bool, is_output: Callable[[str], bool],
                 resumes: Callable[[], bool] | None = None):
        self.out = Path(out)
        self.overwrite = overwrite
        self.is_output = is_output
        self.resumes = resumes
        self.created: list[Path] = []
        self.staging: Path | None = None
        self._lock = None

    def check(self) -> None:
        """Refuse, before any work: a file at ``out``, a non-empty ``out`` without ``overwrite`` (unless it
        holds this run to resume), and a folder (or anything but a file) where an output file goes."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise DRDMError(f"--out {out} is a file, not a folder; choose a folder path")
        if not out.is_dir():
            return
        visible = any(not p.name.startswith(INTERNAL_PREFIX) for p in out.iterdir())
        if visible and not self.overwrite and not (self.resumes is not None and self.resumes()):
            raise DRDMError(f"output folder {out} already exists and is not empty; choose another --out or add "
                            f"--overwrite")
        for target in out.iterdir():
            if (target.is_symlink() or not target.is_file()) and self.is_output(target.name):
                raise DRDMError(f"output folder {out} holds '{target.name}', which is not a regular file, where this "
                                f"run writes one; move it away or choose another --out")

    def open(self) -> Staging:
        """Create ``out`` (and missing parents), lock it, remove staging folders that killed runs left
        (the lock proves their runs are gone), and create this run's staging folder."""
        self.check()
        missing = []
        folder = self.out
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        try:
            for folder in reversed(missing):
                try:
                    folder.mkdir()
                    self.created.append(folder)
                except FileExistsError:  # another run made it a moment ago: the lock decides
                    if not folder.is_dir():
                        raise
            self._acquire()
            self.check()  # again under the lock: another run may have finished into it meanwhile
            for stale in self.out.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.out))
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)
        except OSError as exc:
            self.abort()
            raise unwritable(self.out, exc) from exc
        except DRDMError:
            self.abort()
            raise
        self.staging = Staging(staging, self.out)
        return self.staging

    def _acquire(self) -> None:
        self._lock = lock_folder(self.out)

    def _release(self) -> None:
        if self._lock is not None:
            unlock_folder(self._lock)
            self._lock = None

    def commit(self, last: str) -> None:
        """Move the staged files into ``out``, ``last`` (the manifest) after all others, with any
        previous ``last`` removed first: at every moment ``out`` holds one consistent run."""
        with _signals_held():
            previous = self.out / last
            if previous.is_file() and not previous.is_symlink():
                previous.unlink()
            self.staging.move(self.staging.root, last)
            self.staging = None
            self.created = []
            self._release()

    def abort(self) -> None:
        """Remove this run's staging folder and lock, then the folders it created if they are empty (a
        second signal meanwhile waits until this is done)."""
        with _signals_held():
            if self.staging is not None:
                shutil.rmtree(self.staging.root, ignore_errors=True)
                self.staging = None
            self._release()
            for folder in reversed(self.created):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            self.created = []
