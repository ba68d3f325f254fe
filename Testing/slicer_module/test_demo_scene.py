"""The demo-scene script end to end (with the test stand-in worker): the saved .mrml reloads with
the CT, its segmentation, the samples and their grid transforms in grid display mode."""
import sys

import pytest

pytest.importorskip("slicer")
pytest.importorskip("slicerio")

from conftest import ROOT  # noqa: E402


@pytest.mark.slow
def test_demo_scene_saves_and_reloads(scene, tmp_path, monkeypatch):
    import slicer

    sys.path.insert(0, str(ROOT / "DRDMSlicer" / "Scripts"))
    import build_demo_scene
    from test_slicer_logic import fakeLogic

    monkeypatch.setattr(build_demo_scene, "DRDMLogic", fakeLogic)
    assert build_demo_scene.main(["--out", str(tmp_path / "demo"), "--samples", "2", "--depth", "8"]) == 0
    assert build_demo_scene.main(["--out", str(tmp_path / "demo")]) == 2      # never into a full folder
    reloaded = slicer.vtkMRMLScene()
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(reloaded)
    reloaded.SetURL(str(tmp_path / "demo" / "DRDM_demo.mrml"))
    assert reloaded.Import()
    transforms = [reloaded.GetNthNodeByClass(i, "vtkMRMLGridTransformNode")
                  for i in range(reloaded.GetNumberOfNodesByClass("vtkMRMLGridTransformNode"))]
    assert sorted(t.GetName() for t in transforms) == ["CTChest_drdm_1_transform", "CTChest_drdm_2_transform"]
    for transform in transforms:
        display = transform.GetDisplayNode()
        assert display.GetVisualizationMode() == slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID
        assert transform.GetTransformFromParent().GetDisplacementGrid().GetDimensions() == (128, 128, 34)
    segmentations = [reloaded.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
                     for i in range(reloaded.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    assert len(segmentations) == 3
    assert all(s.GetSegmentation().GetNumberOfSegments() == 7 for s in segmentations)
