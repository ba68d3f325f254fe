"""A small nnU-Net-style raw dataset built from the bundled chest CT (slicerio): 3 cases, 2 channels."""
from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk


def chest_case(offset: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """The chest CT (int16) and its 7-label map, subsampled 4 x 4 x 2 from ``offset`` (32 x 32 x 17 voxels)."""
    import slicerio

    ct = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))
    seg = sitk.ReadImage(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    return sitk.Cast(ct[offset::4, offset::4, ::2], sitk.sitkInt16), seg[offset::4, offset::4, ::2]


def build_nnunet(root: Path, cases: int = 3) -> Path:
    """``root/imagesTr/chest<o>_0000.nii.gz`` (CT, int16), ``_0001`` (smoothed, float32), ``labelsTr/``, ``dataset.json``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for o in range(cases):
        ct, labels = chest_case(o)
        smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(ct, sitk.sitkFloat32), 4.0)
        sitk.WriteImage(ct, str(root / f"imagesTr/chest{o}_0000.nii.gz"))
        sitk.WriteImage(smooth, str(root / f"imagesTr/chest{o}_0001.nii.gz"))
        sitk.WriteImage(labels, str(root / f"labelsTr/chest{o}.nii.gz"))
    meta = {"channel_names": {"0": "CT", "1": "smooth"}, "labels": {"background": 0, **{f"s{v}": v for v in range(1, 8)}},
            "numTraining": cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def tree(root: Path) -> dict[str, bytes]:
    """Every output file below ``root`` (not the run state) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".drdm_state" not in p.parts}
