"""Shared fixtures: the repository on sys.path, the published reference data, synthetic real files,
and a real MRML scene from the slicer-core wheel."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "DRDMSlicer", ROOT / "Testing"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
REFERENCE = ROOT.parent / "shared" / "reference"


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
