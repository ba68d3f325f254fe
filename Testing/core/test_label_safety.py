"""Label-safe warp: the corner vote equals the argmax of every label's indicator warped linearly (one
label at a time through grid_sample), no new value, every segment kept (also many touching one-voxel
segments under a large deformation, and segments moved out of view)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import phantom

from drdm_engine.core import fields
from drdm_engine.core import labels as label_module
from drdm_engine.core.grid import sample_rows, source_rows
from drdm_engine.core.labels import LabelWarper, linear_vote
from drdm_engine.io.read import read_image, read_labels
from drdm_engine.warp.case import generate


def reference_argmax(labels: torch.Tensor, pos: torch.Tensor, lo: int = 0) -> torch.Tensor:
    """Independent one-label-at-a-time one-hot-linear-then-argmax (ties to the lower value)."""
    values = sorted(np.unique(labels.numpy()).tolist())
    scores = torch.stack([sample_rows((labels == v).float()[None, None], pos, "bilinear", lo)[0, 0] for v in values])
    return torch.tensor(values)[scores.argmax(0)].to(labels.dtype)


def touching_voxels(shape=(20, 22, 24), block=6) -> np.ndarray:
    """A block of ``block**3`` touching one-voxel segments (values 1…) in a background of 0, with a
    large value beyond 16 bits among them."""
    labels = np.zeros(shape, np.int32)
    start = [(n - block) // 2 for n in shape]
    region = tuple(slice(s, s + block) for s in start)
    labels[region] = np.arange(1, block ** 3 + 1).reshape((block,) * 3)
    labels[region][0, 0, 0] = 70000
    return labels


def test_one_sample_over_all_indicators_matches_one_label_at_a_time():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 5, (12, 13, 14)).astype(np.int32))
    labels[labels == 3] = 100000
    u = torch.from_numpy(rng.normal(0, 0.6, (1, 3, 12, 13, 14)).astype(np.float32))
    pos = fields.identity_grid((12, 13, 14)) + u
    expected = reference_argmax(labels, pos)
    for budget in (1, 1 << 24):  # restoration scores one label per grid_sample, or all labels in one
        warper = LabelWarper(labels, budget=budget)
        warper.add_slab(0, 5, pos[:, :, :5])
        warper.add_slab(5, 12, pos[:, :, 5:])
        result = warper.result(lambda: [(0, pos[:, :, :5]), (5, pos[:, :, 5:])])
        changed = {tuple(reversed(r["voxel_ijk"])) for r in warper.restored}
        keep = torch.ones_like(result, dtype=torch.bool)
        for voxel in changed:
            keep[voxel] = False
        assert torch.equal(result[keep], expected[keep])
        assert set(np.unique(result.numpy())) == set(np.unique(labels.numpy()))


@pytest.mark.parametrize("shape, spread", [((30, 31, 32), 1.5), ((1, 40, 41), 2.0), ((90, 80), 3.0), ((60, 1), 2.0)])
def test_corner_vote_equals_the_argmax_of_linearly_warped_indicators(monkeypatch, shape, spread):
    """Bit for bit, 2D and 3D, single-voxel axes, positions far outside (border), label values of any
    integer size, a slab of rows taken from the middle of the map, voted in several chunks."""
    monkeypatch.setattr(label_module, "VOTE_CHUNK", 1000)
    rng = np.random.default_rng(1)
    full = torch.from_numpy(rng.choice([0, 3, 70000, -5, 2 ** 40], size=(shape[0] + 10,) + shape[1:]))
    u = torch.from_numpy(rng.normal(0, spread, (1, len(shape)) + shape).astype(np.float32))
    pos = fields.identity_grid(shape) + u
    pos[:, 0] += 5  # output rows sample the map's rows around 5 … 5 + shape[0]
    lo, hi = source_rows(pos, full.shape[0])
    assert torch.equal(linear_vote(full[lo:hi], pos, lo), reference_argmax(full[lo:hi], pos, lo))


def test_corner_vote_breaks_ties_to_the_lower_value():
    labels = torch.tensor([[9, 4], [4, 9]], dtype=torch.uint8)
    pos = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)  # all four corners weigh 1/4: 9 and 4 tie at 1/2
    assert int(linear_vote(labels, pos)) == 4


@pytest.mark.slow
def test_many_touching_one_voxel_segments_survive_a_large_deformation(tmp_path):
    array = touching_voxels()
    image, _ = phantom(size=array.shape[::-1])
    label_image = sitk.GetImageFromArray(array)
    label_image.CopyInformation(image)
    sitk.WriteImage(image, str(tmp_path / "i.nrrd"))
    sitk.WriteImage(label_image, str(tmp_path / "l.nrrd"))
    image = read_image(tmp_path / "i.nrrd", pixel_type=None)
    labels = read_labels(tmp_path / "l.nrrd", image)
    values = set(np.unique(array).tolist())
    restored = 0
    for case in generate(image, labels, None, 4, 79, 5, size=32):
        after = sitk.GetArrayFromImage(case.labels)
        assert set(np.unique(after).tolist()) == values
        restored += len(case.metrics["restored_segments"])
        for entry in case.metrics["restored_segments"]:
            assert after[tuple(reversed(entry["voxel_ijk"]))] == entry["value"]
    assert restored > 0  # the deformation did squeeze some segments out; they were put back


def test_segments_moved_out_of_view_are_kept_where_the_output_samples_nearest():
    labels = torch.zeros((16, 10, 10), dtype=torch.int32)
    labels[0:2, 2:4, 2:4] = 7
    labels[0:2, 6:8, 6:8] = 8
    labels[8:, :, :] = 3
    pos = fields.identity_grid((16, 10, 10))
    pos[:, 0] += 6.0  # every output row samples 6 rows further: rows 0-5 are seen by nobody
    warper = LabelWarper(labels)
    warper.add_slab(0, 16, pos)
    result = warper.result(lambda: [(0, pos)])
    assert set(np.unique(result.numpy())) == {0, 3, 7, 8}
    placed = {r["value"]: r for r in warper.restored}
    assert set(placed) == {7, 8} and all(r["placed_by"] == "nearest_sample" for r in placed.values())
    assert placed[7]["voxel_ijk"][2] == 0 and placed[8]["voxel_ijk"][2] == 0  # the rows nearest them
