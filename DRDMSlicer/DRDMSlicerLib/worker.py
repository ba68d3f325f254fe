"""Run the engine's ``augment`` command as a separate process and follow its progress; no Qt, no torch.

The engine prints ``drdm-progress <fraction 0..1> <text>`` lines on stdout and, on bad input,
``drdm: error: <message>`` on stderr with exit code 2.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PROGRESS_PREFIX = "drdm-progress"
ERROR_PREFIX = "drdm: error:"
READER_JOIN_SECONDS = 2.0
TERMINATE_GRACE_SECONDS = 1.0
# Windows process creation flags (the subprocess constants exist only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def engineSearchPath() -> str:
    """Folder that holds the ``drdm_engine`` package: installed beside the module, or the source tree root.

    Found without importing the engine (which would import torch into the calling process).
    """
    spec = importlib.util.find_spec("drdm_engine")
    if spec is not None and spec.origin:
        return str(Path(spec.origin).resolve().parent.parent)
    here = Path(__file__).resolve().parent
    for folder in (here.parent, here.parent.parent):
        if (folder / "drdm_engine" / "__init__.py").is_file():
            return str(folder)
    raise FileNotFoundError("the drdm_engine package was not found beside the DRDMSlicer module; "
                            "reinstall the DRDMSlicer extension")


def workerPython() -> str:
    """Python executable for the worker: Slicer's ``PythonSlicer`` inside Slicer, else this interpreter."""
    if "Slicer" in Path(sys.executable).name:
        name = "PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer"
        for candidate in (Path(sys.executable).with_name(name), shutil.which("PythonSlicer")):
            if candidate and Path(candidate).is_file():
                return str(candidate)
    return sys.executable


def augmentCommand(python: str, imagePath: str, labelsPath: str | None, outFolder: str, samples: int,
                   depth: int, seed: int, model: str | None = None, device: str = "auto") -> list[str]:
    """Command line of ``python -m drdm_engine augment`` following the engine's contract."""
    command = [python, "-m", "drdm_engine", "augment", imagePath]
    if labelsPath:
        command += ["--labels", labelsPath]
    command += ["--samples", str(samples), "--depth", str(depth), "--seed", str(seed), "--out", outFolder,
                "--device", device, "--progress-lines"]
    if model:
        command += ["--model", model]
    return command


def processOptions(platform: str = sys.platform) -> dict:
    """``Popen`` options that make the worker the root of its own process tree (a new session on POSIX,
    a new process group on Windows, without a console window), so that the whole tree can be killed."""
    if platform == "win32":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def killProcessTree(process: subprocess.Popen) -> None:
    """Kill ``process`` and every process it started (``PythonSlicer`` is a launcher whose child, the real
    Python, shares its pipes and would survive ``process.kill()``). On POSIX the group first gets SIGTERM
    (the engine cleans up its staging folder) and, after at most ``TERMINATE_GRACE_SECONDS``, SIGKILL."""
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, creationflags=CREATE_NO_WINDOW)
        if process.poll() is None:
            process.kill()
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            if process.poll() is None:
                process.kill()
            return
        if signum == signal.SIGTERM:
            _awaitGroupExit(process, TERMINATE_GRACE_SECONDS)


def _awaitGroupExit(process: subprocess.Popen, seconds: float) -> None:
    """Wait at most ``seconds`` until no process of ``process``'s group is left (the engine removes its
    staging folder on SIGTERM; whatever is still there afterwards gets SIGKILL)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)


class EngineJob:
    """A running worker process tree whose stdout progress lines and stderr (UTF-8, undecodable bytes
    replaced) are collected by reader threads."""

    def __init__(self, command: list[str], engineFolder: str | None = None) -> None:
        env = dict(os.environ)
        if engineFolder:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (engineFolder, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.command = command
        self.fraction = 0.0
        self.message = "starting"
        self.cancelled = False
        self._stderr: list[str] = []
        self._log: list[str] = []
        self._lock = threading.Lock()
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, encoding="utf-8", errors="replace", bufsize=1,
                                         env=env, **processOptions())
        self._readers = [threading.Thread(target=self._read, args=(self._process.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self._process.stderr, False), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, isStdout: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            with self._lock:
                if isStdout and line.startswith(PROGRESS_PREFIX + " "):
                    parts = line.split(" ", 2)
                    try:
                        self.fraction = min(1.0, max(0.0, float(parts[1])))
                    except (IndexError, ValueError):
                        self._log.append(line)
                        continue
                    self.message = parts[2] if len(parts) > 2 else ""
                elif isStdout:
                    self._log.append(line)
                else:
                    self._stderr.append(line)
        stream.close()

    def running(self) -> bool:
        """True while the worker process has not exited."""
        return self._process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process, then for its output readers (at most ``READER_JOIN_SECONDS``; a process
        it left behind that still holds the pipes is killed); returns the exit code."""
        code = self._process.wait(timeout)
        if not self._joinReaders():
            killProcessTree(self._process)
            self._joinReaders()
        return code

    def _joinReaders(self) -> bool:
        """Join the reader threads within ``READER_JOIN_SECONDS`` in all; True when both ended."""
        for reader in self._readers:
            reader.join(READER_JOIN_SECONDS)
        return not any(reader.is_alive() for reader in self._readers)

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    def cancel(self) -> None:
        """Kill the worker's whole process tree (no partial results are loaded) and wait for it to exit."""
        self.cancelled = True
        killProcessTree(self._process)
        self.wait()

    def log(self) -> list[str]:
        """Non-progress stdout lines and all stderr lines so far."""
        with self._lock:
            return list(self._log) + list(self._stderr)

    def errorMessage(self) -> str:
        """One line describing why the worker failed (the engine's ``drdm: error:`` line when present)."""
        with self._lock:
            lines = [line for line in self._stderr if line.strip()]
        for line in reversed(lines):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):].strip()
        if lines:
            return f"the DRDM engine failed (exit code {self.returncode}): {lines[-1].strip()}"
        return f"the DRDM engine failed (exit code {self.returncode}) without a message"
