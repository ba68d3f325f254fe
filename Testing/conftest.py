"""Shared fixtures and helpers: the repository on sys.path, the published reference data, synthetic
real files, a real MRML scene from the slicer-core wheel, and the ways tests run ``drdm`` (in this
process or as a child process) and check its one-line refusals."""
from __future__ import annotations

import locale
import os
import resource
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "DRDMSlicer", ROOT / "Testing"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
REFERENCE = ROOT.parent / "shared" / "reference"
ERROR_PREFIX = "drdm: error:"
GIB = 2 ** 30


# --- drdm in this process and in child processes ---------------------------------------------------------
def error_lines(text: str) -> list[str]:
    """The lines of ``text`` that start ``drdm: error:``."""
    return [line for line in text.splitlines() if line.startswith(ERROR_PREFIX)]


def one_error_line(code: int | None, stderr: str, *fragments: str) -> str:
    """Assert exit code 2, exactly one ``drdm: error:`` line holding every fragment, and no traceback;
    returns the line."""
    assert "Traceback" not in stderr, stderr[-2500:]
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1, (code, stderr[-2500:])
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run_cli(capsys, *argv) -> tuple[int | None, str]:
    """``drdm ARGV`` in this process: (exit code, stderr). An exception escaping ``main`` comes back as
    its traceback in stderr (code ``None``), so that a test fails with what the user would see."""
    from drdm_engine.cli import main

    tb = ""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    except Exception:  # noqa: BLE001 - what escaped is the defect
        code, tb = None, traceback.format_exc()
    return code, capsys.readouterr().err + tb


def refused(capsys, *argv, says: str | tuple[str, ...] = ()) -> str:
    """``drdm ARGV`` in this process is refused: exit code 2, one ``drdm: error:`` line holding what it
    ``says``, no traceback; returns the line."""
    return one_error_line(*run_cli(capsys, *argv), *([says] if isinstance(says, str) else says))


def start_drdm(*argv, launcher=(), module: str = "drdm_engine", threads: int | None = 1,
               memory_gib: int | None = None, **popen) -> subprocess.Popen:
    """Start ``python [LAUNCHER] -m MODULE ARGV`` with the repository on PYTHONPATH, unbuffered output,
    ``threads`` OpenMP threads (None: inherited) and, given ``memory_gib``, an address-space limit (give
    such a run ``--device cpu``: a CUDA context does not start under one). The child gets SIGINT's
    default action back: a test runner started in the background ignores SIGINT, and its children
    would inherit that and ignore the Ctrl-C a test sends."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)

    def prepare_child():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if memory_gib:
            resource.setrlimit(resource.RLIMIT_AS, (memory_gib * GIB, memory_gib * GIB))

    command = [sys.executable, *launcher, "-m", module, *map(str, argv)]
    return subprocess.Popen(command, env=env, preexec_fn=prepare_child, **popen)


def run_drdm(*argv, timeout: float = 300, **options) -> subprocess.CompletedProcess:
    """:func:`start_drdm` and wait for it (killed after ``timeout`` seconds); its exit code and text output."""
    with start_drdm(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def drdm_process():
    """:func:`start_drdm` for one test (stdout and stderr piped as text unless given); any child still
    running or stopped when the test ends is killed."""
    started = []

    def start(*argv, **options) -> subprocess.Popen:
        options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **options}
        started.append(start_drdm(*argv, **options))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted at ``tmp_path / "disk"`` and unmounted afterwards (root only; the test is
    skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


# --- data, scenes and settings ---------------------------------------------------------------------------
def samples_of(manifest: dict) -> list[dict]:
    """The samples of a single-image run's manifest (its one case), ``image`` naming the first channel."""
    return [{**s, "image": s["images"][0]} for s in manifest["cases"][0]["samples"]]


@pytest.fixture()
def one_thread():
    """Small grids: one intra-op thread avoids thread hand-off stalls on a shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "parity_2d_cmr.npz").is_file():
        pytest.skip("../shared/reference is not present")
    return REFERENCE


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def phantom(size=(40, 30, 20), spacing=(1.5, 2.0, 3.5), origin=(-31.0, 12.5, 140.0),
            direction=None, seed=0) -> tuple[sitk.Image, sitk.Image]:
    """Oblique, anisotropic, non-cubic CT-like phantom (int16, HU-like) and its 3-label map (uint8)."""
    rng = np.random.default_rng(seed)
    shape = tuple(reversed(size))
    idx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(i ** 2 for i in idx))
    labels = np.zeros(shape, np.uint8)
    labels[r < 0.85] = 1
    labels[(idx[-1] - 0.3) ** 2 + idx[-2] ** 2 + idx[0] ** 2 < 0.12] = 2
    labels[(idx[-1] + 0.35) ** 2 + (idx[-2] - 0.2) ** 2 + idx[0] ** 2 < 0.05] = 3
    hu = np.array([-1000, 40, 300, -700])[labels] + rng.normal(0, 15, shape)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    label_image = sitk.GetImageFromArray(labels)
    direction = rotation(0.3, -0.2, 0.5) if direction is None else direction
    for im in (image, label_image):
        im.SetSpacing(spacing)
        im.SetOrigin(origin)
        im.SetDirection(tuple(np.asarray(direction).ravel()))
    return image, label_image


def random_volume(path: Path, shape=(8, 16, 16), seed: int = 0, spacing=None, origin=None, direction=None) -> Path:
    """A random (non-constant) float32 volume of array ``shape`` (z, y, x) written with SimpleITK to ``path``."""
    image = sitk.GetImageFromArray(np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32))
    if spacing is not None:
        image.SetSpacing(spacing)
    if origin is not None:
        image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture()
def phantom_files(tmp_path):
    image, labels = phantom()
    ip, lp = tmp_path / "case.nrrd", tmp_path / "case_labels.nrrd"
    sitk.WriteImage(image, str(ip))
    sitk.WriteImage(labels, str(lp))
    return ip, lp


@pytest.fixture
def slicer():
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer-core (real MRML) is not installed")
    return slicer


@pytest.fixture
def scene(slicer):
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    yield scene
    scene.Clear(True)


def blobImage(shape=(16, 20, 24), spacing=(1.5, 1.2, 2.0), origin=(10.0, -20.0, 5.0), angle=0.3):
    """Smooth float image (K, J, I = shape) of two Gaussian blobs, 0..1000, with an oblique direction."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    blobs = np.exp(-(((i - 8) / 5) ** 2 + ((j - 9) / 5) ** 2 + ((k - 7) / 4) ** 2))
    blobs += 0.6 * np.exp(-(((i - 17) / 4) ** 2 + ((j - 12) / 4) ** 2 + ((k - 9) / 4) ** 2))
    image = sitk.GetImageFromArray((1000 * blobs).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    c, s = np.cos(angle), np.sin(angle)
    image.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    return image


def write_dicom_series(image: sitk.Image, folder: Path, series: int = 2) -> None:
    """One DICOM file per slice with the tags that carry geometry. GDCM's writer switches the process
    to the C locale; the caller's locale is put back."""
    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        _write_dicom_slices(image, folder, series)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(image: sitk.Image, folder: Path, series: int) -> None:
    folder.mkdir(exist_ok=True)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                           "0020|000e": f"1.2.826.0.1.3680043.2.1125.1.{series}", "0020|0013": str(k + 1),
                           "0020|0037": "\\".join(f"{v:.6f}" for v in direction[0::3][:3] + direction[1::3][:3]),
                           "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
                           "0018|0050": str(image.GetSpacing()[2]), "0008|0018": f"1.2.826.0.1.3680043.2.1125.{series}.3.{k}"
                           }.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"series{series}_slice{k:03d}.dcm"))
        writer.Execute(slice_)
