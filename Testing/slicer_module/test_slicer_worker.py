"""The worker process behind Generate/Cancel, started through a stand-in of Slicer's ``PythonSlicer``
launcher (``fake_pythonslicer.py``: the real command runs as its child and shares its pipes)."""
import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("slicer")
sitk = pytest.importorskip("SimpleITK")

from conftest import ROOT, blobImage  # noqa: E402

FAKE_WORKER = str(Path(__file__).with_name("fake_drdm_worker.py"))
LAUNCHER = str(Path(__file__).with_name("fake_pythonslicer.py"))


@pytest.fixture
def volume(scene, tmp_path):
    from helpers import loadVolume

    sitk.WriteImage(blobImage(), str(tmp_path / "input.nrrd"))
    return loadVolume(scene, tmp_path / "input.nrrd")


def launcherLogic():
    from DRDMSlicerLib import DRDMLogic

    return DRDMLogic(pythonExecutable=sys.executable, engineModule=[LAUNCHER, sys.executable, FAKE_WORKER])


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = f"/proc/{pid}/stat"
    if os.path.exists(stat):
        with open(stat) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def childPid(generation, seconds: float = 30.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in generation.job.log():
            if line.startswith("launcher-child "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise AssertionError(f"the stand-in launcher did not report its child: {generation.job.log()}")


@pytest.mark.skipif(sys.platform == "win32", reason="process checks through /proc and signals")
@pytest.mark.slow
def test_cancel_kills_the_launcher_and_its_child_and_returns_at_once(scene, volume, monkeypatch):
    monkeypatch.setenv("DRDM_FAKE_SLEEP", "20")
    before = scene.GetNumberOfNodes()
    generation = launcherLogic().start(volume, samples=2, depth=8, seed=1)
    child, launcher = childPid(generation), generation.job._process.pid
    assert alive(child) and alive(launcher)
    started = time.monotonic()
    generation.cancel()
    assert time.monotonic() - started < 2.0          # the bound: Slicer must not freeze
    assert not alive(launcher) and not alive(child)
    assert scene.GetNumberOfNodes() == before


def test_generation_through_the_launcher_finishes_and_undecodable_output_does_not_stop_it(scene, volume,
                                                                                          monkeypatch):
    monkeypatch.setenv("DRDM_FAKE_BAD_BYTES", "1")
    generation = launcherLogic().start(volume, samples=1, depth=8, seed=1)
    results = generation.finish()
    assert len(results) == 1 and generation.job.fraction == 1.0
    assert any("\ufffd" in line and "not utf-8" in line for line in generation.job.log())


def test_worker_is_started_as_its_own_process_tree_without_a_console_window():
    from DRDMSlicerLib.worker import CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, processOptions

    assert processOptions("linux") == {"start_new_session": True}
    assert processOptions("darwin") == {"start_new_session": True}
    flags = processOptions("win32")["creationflags"]
    assert flags & CREATE_NO_WINDOW and flags & CREATE_NEW_PROCESS_GROUP


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and signals")
@pytest.mark.slow
def test_cancel_lets_the_real_engine_remove_its_staging_folder(tmp_path):
    """Cancel sends SIGTERM first: the engine (here behind the stand-in launcher) cleans up its staging
    folder and lock, then the group is killed. SIGKILL alone leaves a hidden staging folder behind."""
    from DRDMSlicerLib.worker import EngineJob

    sitk.WriteImage(blobImage(), str(tmp_path / "input.nrrd"))
    out = tmp_path / "out"
    job = EngineJob([sys.executable, LAUNCHER, sys.executable, "-m", "drdm_engine.cli", "augment",
                     str(tmp_path / "input.nrrd"), "--out", str(out), "--samples", "40", "--size", "64",
                     "--model", "none", "--progress-lines"], engineFolder=str(ROOT))
    deadline = time.monotonic() + 120
    while job.fraction == 0.0 and job.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.running(), job.log()
    assert any(p.name.startswith(".drdm-staging-") for p in out.iterdir())
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 2.0
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
