"""DRDMSlicer logic against real MRML (slicer-core): grid transforms checked with Slicer's own hardening,
geometry, segments, display, export and read-back, cancellation and error messages."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
sitk = pytest.importorskip("SimpleITK")

from conftest import ROOT, blobImage  # noqa: E402

FAKE_WORKER = str(Path(__file__).with_name("fake_drdm_worker.py"))
INTERIOR = (slice(3, -3),) * 3


@pytest.fixture
def case(scene, tmp_path):
    """Input volume (oblique, anisotropic) and a two-segment segmentation in the scene."""
    from helpers import addSegmentation, loadVolume

    image = blobImage()
    sitk.WriteImage(image, str(tmp_path / "input.nrrd"))
    volume = loadVolume(scene, tmp_path / "input.nrrd")
    volume.SetName("chest")
    array = sitk.GetArrayFromImage(image)
    core = (array > 700).astype(np.uint8)
    rim = ((array > 300) & (array <= 700)).astype(np.uint8)
    segmentation = addSegmentation(scene, volume, [("core", "Core", (0.9, 0.1, 0.1), core),
                                                   ("rim", "Rim", (0.1, 0.3, 0.8), rim)])
    segmentation.SetName("chest_seg")
    return image, volume, segmentation


def fakeLogic():
    from DRDMSlicerLib import DRDMLogic

    return DRDMLogic(pythonExecutable=sys.executable, engineModule=[FAKE_WORKER])


def test_field_as_grid_transform_hardens_like_itk_resampling(scene, case):
    from DRDMSlicerLib import fieldImageToGridTransformNode
    from fake_drdm_worker import analyticField
    from helpers import hardeningError

    image, volume, _ = case
    field = analyticField(image, 0)
    node = fieldImageToGridTransformNode(field, scene, "t")
    error = hardeningError(scene, volume, node, image, field)
    flippedField = sitk.Compose([-sitk.VectorIndexSelectionCast(field, c) for c in range(3)])
    flipped = fieldImageToGridTransformNode(flippedField, scene, "flipped")
    assert error < 0.01, error                    # of a 0..1000 image (measured 4e-4)
    assert hardeningError(scene, volume, flipped, image, field) > 1000 * error
    vectors = sitk.GetArrayFromImage(field)
    point = np.array(image.TransformIndexToPhysicalPoint((5, 6, 7)))
    ras = point * [-1, -1, 1]
    moved = np.array(node.GetTransformFromParent().TransformPoint(*ras))
    assert np.allclose(moved - ras, vectors[7, 6, 5] * [-1, -1, 1], atol=1e-6)


def test_generate_creates_nodes_with_exact_geometry_segments_and_grid_display(scene, case):
    from DRDMSlicerLib.geometry import ijkToRasFromNode
    from DRDMSlicerLib.segments import segmentIds
    from fake_drdm_worker import analyticField
    from helpers import hardened, hardeningError, segmentMask

    image, volume, segmentation = case
    seen = []
    results = fakeLogic().generate(volume, segmentation, samples=2, depth=8, seed=3,
                                   progress=lambda f, text: seen.append(f))
    assert len(results) == 2 and seen[-1] == 1.0
    inputLabels = {sid: segmentMask(segmentation, sid, volume) for sid in ("core", "rim")}
    for number, result in enumerate(results, start=1):
        assert result.volumeNode.GetName() == f"chest_drdm_{number}"
        assert np.array_equal(ijkToRasFromNode(result.volumeNode), ijkToRasFromNode(volume))
        deformed = slicer_array(result.volumeNode)
        assert deformed.shape == sitk.GetArrayFromImage(image).shape
        assert hardeningError(scene, volume, result.transformNode, image, analyticField(image, number - 1)) < 0.01
        slicerHardened = sitk.Resample(hardened(scene, volume, result.transformNode), image)
        assert np.abs(sitk.GetArrayFromImage(slicerHardened) - deformed)[INTERIOR].mean() < 10.0
        assert np.abs(sitk.GetArrayFromImage(image) - deformed)[INTERIOR].mean() > 20.0
        seg = result.segmentationNode
        assert segmentIds(seg) == ["core", "rim"]
        for sid, name, colour in (("core", "Core", (0.9, 0.1, 0.1)), ("rim", "Rim", (0.1, 0.3, 0.8))):
            segment = seg.GetSegmentation().GetSegment(sid)
            assert segment.GetName() == name and np.allclose(segment.GetColor(), colour)
            mask = segmentMask(seg, sid, volume)
            assert set(np.unique(mask)) <= {0, 1}
            overlap = 2 * (mask & inputLabels[sid]).sum() / (mask.sum() + inputLabels[sid].sum())
            assert 0.5 < overlap < 1.0, overlap
        geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
        assert geometry, "segmentation has no reference geometry"
        display = result.transformNode.GetDisplayNode()
        assert display.GetVisualizationMode() == display.VIS_MODE_GRID
        assert display.GetVisibility2D() and bool(display.GetVisibility()) == (number == 1)  # one shown
        assert bool(seg.GetDisplayNode().GetVisibility()) == (number == 1)
        assert display.GetRegionNode() is result.volumeNode
        assert result.settings["seed"] == 3 and result.settings["depth"] == 8
        assert "folding_fraction" in result.metrics
    assert not np.array_equal(slicer_array(results[0].volumeNode), slicer_array(results[1].volumeNode))
    again = fakeLogic().generate(volume, None, samples=1, depth=8, seed=4)
    assert again[0].volumeNode.GetName() == "chest_drdm_3" and again[0].segmentationNode is None


def slicer_array(node):
    import slicer

    return slicer.util.arrayFromVolume(node).astype(np.float64)


def test_export_writes_cases_that_read_back_and_never_overwrites(scene, case, tmp_path):
    import slicer
    from DRDMSlicerLib import DRDMLogic
    from DRDMSlicerLib.geometry import ijkToRasFromNode
    from DRDMSlicerLib.segments import segmentIds
    from helpers import loadVolume

    _, volume, segmentation = case
    results = fakeLogic().generate(volume, segmentation, samples=2, depth=8, seed=5)
    folder = tmp_path / "export"
    manifestPath = DRDMLogic.export(results, folder)
    manifest = json.loads(manifestPath.read_text())
    assert [c["name"] for c in manifest["cases"]] == ["chest_drdm_1", "chest_drdm_2"]
    for result, entry in zip(results, manifest["cases"]):
        readVolume = loadVolume(scene, folder / entry["image"])
        assert np.array_equal(slicer_array(readVolume), slicer_array(result.volumeNode))
        assert np.allclose(slicer.util.arrayFromVolume(readVolume).shape, slicer_array(volume).shape)
        readSeg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(folder / entry["segmentation"]))
        assert storage.ReadData(readSeg)
        assert segmentIds(readSeg) == ["core", "rim"]
        assert readSeg.GetSegmentation().GetSegment("rim").GetName() == "Rim"
        readTransform = scene.AddNewNodeByClass("vtkMRMLTransformNode")
        storage = slicer.vtkMRMLTransformStorageNode()
        storage.SetFileName(str(folder / entry["transform"]))
        assert storage.ReadData(readTransform)
        original = result.transformNode.GetTransformFromParent()
        restored = readTransform.GetTransformFromParent()
        ijkToRas = ijkToRasFromNode(volume)
        for ijk in ([5, 6, 7], [12, 10, 8], [3, 15, 11]):     # grid nodes: exact whatever the interpolation
            ras = (ijkToRas @ [*ijk, 1])[:3]
            assert np.allclose(original.TransformPoint(ras), restored.TransformPoint(ras), atol=1e-4)
        assert entry["settings"]["seed"] == 5
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(FileExistsError, match="never overwritten"):
        DRDMLogic.export(results, folder)
    assert sorted(p.name for p in folder.iterdir()) == before
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot create the export folder"):
        DRDMLogic.export(results, blocker / "sub")


def test_cancel_kills_worker_and_leaves_no_nodes(scene, case, monkeypatch):
    import time

    _, volume, segmentation = case
    monkeypatch.setenv("DRDM_FAKE_SLEEP", "30")
    before = scene.GetNumberOfNodes()
    generation = fakeLogic().start(volume, segmentation, samples=2, depth=8, seed=1)
    time.sleep(0.5)
    assert generation.running()
    folder = generation._folder
    generation.cancel()
    assert not generation.running() and generation.job.returncode != 0
    assert not folder.exists()
    assert scene.GetNumberOfNodes() == before
    with pytest.raises(RuntimeError, match="cancelled"):
        generation.finish()
    assert scene.GetNumberOfNodes() == before


def test_engine_error_reaches_the_user_as_one_line(scene, tmp_path):
    from helpers import loadVolume

    constant = sitk.Image(8, 8, 8, sitk.sitkFloat32) + 5.0
    sitk.WriteImage(constant, str(tmp_path / "flat.nrrd"))
    volume = loadVolume(scene, tmp_path / "flat.nrrd")
    before = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError) as info:
        fakeLogic().generate(volume, samples=1, depth=4, seed=0)
    assert "is constant" in str(info.value) and "\n" not in str(info.value)
    assert scene.GetNumberOfNodes() == before


def test_bad_settings_and_overlapping_segments_are_refused(scene, case):
    from helpers import addSegmentation

    _, volume, _ = case
    with pytest.raises(ValueError, match="depth must be between"):
        fakeLogic().start(volume, depth=0)
    with pytest.raises(ValueError, match="model file not found"):
        fakeLogic().start(volume, model="/no/such/model.pt")
    with pytest.raises(ValueError, match="not a folder"):
        fakeLogic().start(volume, model=str(ROOT / "drdm_engine" / "models"))
    mask = np.zeros(slicer_array(volume).shape, np.uint8)
    mask[4:8, 4:8, 4:8] = 1
    overlapping = addSegmentation(scene, volume, [("a", "A", (1, 0, 0), mask), ("b", "B", (0, 1, 0), mask)])
    with pytest.raises(ValueError, match="overlaps another segment"):
        fakeLogic().start(volume, overlapping)


@pytest.mark.slow
def test_real_engine_diffusion_only_reproduced_by_hardening(scene, tmp_path):
    """The real ``python -m drdm_engine augment`` (diffusion only, small depth) through the logic."""
    from DRDMSlicerLib import DRDMLogic
    from DRDMSlicerLib.geometry import ijkToRasFromNode
    from helpers import addSegmentation, hardened, loadVolume

    image = blobImage(shape=(32, 32, 32), spacing=(1.0, 1.0, 1.5), angle=0.2)
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    volume = loadVolume(scene, tmp_path / "ct.nrrd")
    mask = (sitk.GetArrayFromImage(image) > 500).astype(np.uint8)
    segmentation = addSegmentation(scene, volume, [("blob", "Blob", (0.2, 0.8, 0.2), mask)])
    results = DRDMLogic(pythonExecutable=sys.executable).generate(volume, segmentation, samples=1, depth=4,
                                                                 seed=7, model="none", device="cpu")
    result = results[0]
    assert np.array_equal(ijkToRasFromNode(result.volumeNode), ijkToRasFromNode(volume))
    deformed = slicer_array(result.volumeNode)
    slicerHardened = sitk.GetArrayFromImage(sitk.Resample(hardened(scene, volume, result.transformNode), image))
    assert np.abs(slicerHardened - deformed)[INTERIOR].mean() < 10.0
    assert result.segmentationNode.GetSegmentation().GetSegment("blob").GetName() == "Blob"
    assert 0.0 <= result.metrics["folding_fraction"] <= 1.0


def test_samples_as_one_sequence_browsed_by_index(scene, case):
    import vtk
    from DRDMSlicerLib import samplesAsSequence
    from DRDMSlicerLib.segments import segmentIds
    from DRDMSlicerLib.sequences import sequencesLogic

    _, volume, segmentation = case
    results = fakeLogic().generate(volume, segmentation, samples=3, depth=8, seed=5)
    browser = samplesAsSequence(results)
    volumes = browser.GetMasterSequenceNode()
    assert volumes.GetNumberOfDataNodes() == 3 and volumes.GetIndexName() == "sample"
    synchronized = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(synchronized, True)
    names = {synchronized.GetItemAsObject(i).GetName() for i in range(synchronized.GetNumberOfItems())}
    assert names == {"DRDM samples volumes", "DRDM samples transforms", "DRDM samples segmentations"}
    logic = sequencesLogic(scene)
    point = [3.0, -2.0, 4.0]
    for item in (2, 0, 1):
        browser.SetSelectedItemNumber(item)
        logic.UpdateProxyNodesFromSequences(browser)
        proxyVolume = browser.GetProxyNode(volumes)
        assert np.array_equal(slicer_array(proxyVolume), slicer_array(results[item].volumeNode))
        proxies = [browser.GetProxyNode(synchronized.GetItemAsObject(i)) for i in range(synchronized.GetNumberOfItems())]
        transform = next(p for p in proxies if p.IsA("vtkMRMLTransformNode"))
        moved = transform.GetTransformFromParent().TransformPoint(point)
        assert np.allclose(moved, results[item].transformNode.GetTransformFromParent().TransformPoint(point), atol=1e-6)
        assert transform.GetDisplayNode().GetVisualizationMode() == transform.GetDisplayNode().VIS_MODE_GRID
        segmentationProxy = next(p for p in proxies if p.IsA("vtkMRMLSegmentationNode"))
        assert segmentIds(segmentationProxy) == ["core", "rim"]
    assert all(scene.IsNodePresent(node) for r in results for node in r.nodes())


def test_the_panel_takes_depths_from_the_engine():
    """Default and largest diffusion depth are the engine's own (its settings module), not copies."""
    from DRDMSlicerLib import DEFAULT_DEPTH, MAX_DEPTH

    from drdm_engine.cli.commands import build_parser
    from drdm_engine.core.defaults import DEFAULT_DEPTH as ENGINE_DEPTH
    from drdm_engine.core.diffusion import DiffusionSchedule

    assert DEFAULT_DEPTH == ENGINE_DEPTH == build_parser(False).parse_args(["augment", "--out", "o"]).depth
    assert MAX_DEPTH == DiffusionSchedule().timesteps - 1
