"""Generated samples in the scene (real MRML): compact float32 grid transforms that still reproduce the
output under Slicer's hardening, one sample shown at a time, parent transforms, deleted and cleared
nodes, and a console generate() that lets Slicer process its events."""
import numpy as np
import pytest

pytest.importorskip("slicer")
sitk = pytest.importorskip("SimpleITK")

from test_slicer_logic import INTERIOR, case, fakeLogic  # noqa: E402,F401


def test_grid_transform_is_float32_on_a_coarse_grid_and_still_reproduces_the_output(scene, case):
    import vtk
    from DRDMSlicerLib import fieldImageToGridTransformNode
    from fake_drdm_worker import analyticField, warp
    from helpers import hardened

    image, volume, _ = case
    field = analyticField(image, 0)
    node = fieldImageToGridTransformNode(field, scene, "coarse", maxPoints=8)
    grid = node.GetTransformFromParent().GetDisplacementGrid()
    assert grid.GetDimensions() == (8, 8, 8)
    assert grid.GetPointData().GetScalars().GetDataType() == vtk.VTK_FLOAT
    engineOutput = sitk.GetArrayFromImage(warp(image, field, sitk.sitkLinear))
    slicerHardened = sitk.GetArrayFromImage(sitk.Resample(hardened(scene, volume, node), image))
    assert np.abs(slicerHardened - engineOutput)[INTERIOR].mean() < 10.0      # the tests' tolerance, of 0..1000
    full = fieldImageToGridTransformNode(field, scene, "full")
    assert full.GetTransformFromParent().GetDisplacementGrid().GetDimensions() == image.GetSize()


def test_one_sample_is_shown_at_a_time(scene, case):
    from DRDMSlicerLib import showSample

    _, volume, segmentation = case
    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    results = fakeLogic().generate(volume, segmentation, samples=3, depth=8, seed=2)
    for shown in (0, 2, 1):
        if shown:
            showSample(results, shown)
        for number, result in enumerate(results):
            assert bool(result.transformNode.GetDisplayNode().GetVisibility()) == (number == shown)
            assert bool(result.segmentationNode.GetDisplayNode().GetVisibility()) == (number == shown)
        assert {view.GetBackgroundVolumeID() for view in views} == {results[shown].volumeNode.GetID()}


def test_outputs_of_a_volume_under_a_parent_transform_sit_under_the_same_parent(scene, case):
    import vtk

    _, volume, segmentation = case
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 40.0)
    matrix.SetElement(0, 1, 0.3)
    parent.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(parent.GetID())
    segmentation.SetAndObserveTransformNodeID(parent.GetID())
    results = fakeLogic().generate(volume, segmentation, samples=1, depth=8, seed=2)
    assert [node.GetTransformNodeID() for node in results[0].nodes()] == [parent.GetID()] * 3


def test_deleted_nodes_drop_out_and_clear_removes_only_generated_nodes(scene, case):
    from DRDMSlicerLib import presentResults, removeResults, removeSequence, samplesAsSequence
    from DRDMSlicerLib.results import removeNode

    _, volume, segmentation = case
    before = scene.GetNumberOfNodes()
    results = fakeLogic().generate(volume, segmentation, samples=3, depth=8, seed=2)
    browser = samplesAsSequence(results)
    removeNode(results[1].volumeNode)                       # deleted by the user, with its display node
    removeNode(results[2].segmentationNode)
    kept = presentResults(results, scene)
    assert [r.volumeNode.GetName() for r in kept] == ["chest_drdm_1", "chest_drdm_3"]
    assert kept[1].segmentationNode is None
    removeSequence(browser)
    removeResults(results)
    assert scene.GetNumberOfNodes() == before
    assert scene.IsNodePresent(volume) and scene.IsNodePresent(segmentation)


def test_console_generate_lets_slicer_process_events_while_it_waits(scene, case, monkeypatch):
    import slicer

    class App:
        processed = 0

        def processEvents(self):
            App.processed += 1

    monkeypatch.setenv("DRDM_FAKE_SLEEP", "0.5")
    monkeypatch.setattr(slicer, "app", App(), raising=False)
    _, volume, _ = case
    fakeLogic().generate(volume, samples=1, depth=8, seed=2)
    assert App.processed >= 10


def test_a_file_off_the_input_grid_is_refused_from_its_header_and_leaves_no_nodes(scene, case, tmp_path):
    import json

    from DRDMSlicerLib import loadResults
    from fake_drdm_worker import analyticField

    image, volume, _ = case
    field = analyticField(image, 0)
    field.SetOrigin([o + 1.0 for o in image.GetOrigin()])
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    sitk.WriteImage(field, str(tmp_path / "field.nrrd"))
    samples = [{"images": ["image.nrrd"], "field": "field.nrrd"}]
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "drdm-manifest", "cases": [{"samples": samples}]}))
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="displacement field field.nrrd does not lie on the input volume's grid"):
        loadResults(tmp_path / "manifest.json", volume)
    assert scene.GetNumberOfNodes() == before
