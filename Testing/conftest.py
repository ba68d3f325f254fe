"""Shared fixtures: a real MRML scene from the slicer-core wheel and small analytic volumes."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "DRDMSlicer", ROOT / "Testing"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


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
    import SimpleITK as sitk

    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    blobs = np.exp(-(((i - 8) / 5) ** 2 + ((j - 9) / 5) ** 2 + ((k - 7) / 4) ** 2))
    blobs += 0.6 * np.exp(-(((i - 17) / 4) ** 2 + ((j - 12) / 4) ** 2 + ((k - 9) / 4) ** 2))
    image = sitk.GetImageFromArray((1000 * blobs).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    c, s = np.cos(angle), np.sin(angle)
    image.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    return image
