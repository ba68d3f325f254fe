"""Field maths against independent implementations (SimpleITK) and closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from drdm_engine.core import fields


def smooth_field(shape, amplitude, seed=0):
    g = torch.Generator().manual_seed(seed)
    nd = len(shape)
    coarse = torch.randn((1, nd) + (4,) * nd, generator=g) * amplitude
    return fields.resize(coarse, shape)


def test_warp_matches_simpleitk_resampling_3d():
    shape = (20, 24, 28)
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.normal(size=shape).astype(np.float32))
    u = smooth_field(shape, 3.0)
    ours = fields.warp(image[None, None], u, "bilinear", "zeros")[0, 0].numpy()
    # SimpleITK: index space = physical space (unit spacing, zero origin, identity direction);
    # its displacement components are (x, y, z) = tensor axes (2, 1, 0).
    disp = sitk.GetImageFromArray(u[0].flip(0).permute(1, 2, 3, 0).double().numpy(), isVector=True)
    theirs = sitk.GetArrayFromImage(sitk.Resample(sitk.GetImageFromArray(image.numpy()),
                                                  sitk.DisplacementFieldTransform(disp), sitk.sitkLinear, 0.0))
    pos = fields.identity_grid(shape)[0] + u[0]
    inside = torch.stack([(pos[c] >= 0) & (pos[c] <= shape[c] - 1) for c in range(3)]).all(0).numpy()
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-4)


def test_warp_2d_channel_order_is_tensor_axis_order():
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 8, 3] = 1.0
    u = torch.zeros(1, 2, 16, 16)
    u[:, 1] = -5.0  # channel 1 = axis 1 (columns): out(r, c) = in(r, c - 5)
    out = fields.warp(image, u, "nearest")
    assert out[0, 0, 8, 8] == 1.0 and out.sum() == 1.0


def sinusoid(points: torch.Tensor, amplitude: float) -> torch.Tensor:
    """Analytic smooth field at voxel positions ``points`` ``(1, 3, *shape)``."""
    p = points.double()
    return torch.stack([amplitude * torch.sin(2 * torch.pi * p[:, (c + 1) % 3] / 23 + c) for c in range(3)], 1)


def test_compose_matches_closed_form():
    shape = (28, 28, 28)
    x = fields.identity_grid(shape, dtype=torch.float64)
    a, b = sinusoid(x, 2.0), sinusoid(x * 1.3, 1.5)
    exact = b + sinusoid(x + b, 2.0)  # x + b(x) + a(x + b(x)): b first, then a
    ours = fields.compose(a, b)
    inner = (slice(None), slice(None)) + (slice(4, -4),) * 3
    assert (ours - exact)[inner].abs().max() < 0.05
    assert (a + b - exact)[inner].abs().max() > 0.5  # adding fields is not composing them


def test_binary_exponentiation_matches_sequential_composition():
    v = smooth_field((24, 24, 24), 0.15, 4).repeat(4, 1, 1, 1, 1)
    n = torch.tensor([0, 1, 5, 13])
    fast, slow = fields.power(v, n), fields.power_sequential(v, n)
    assert fast[0].abs().max() == 0 and torch.equal(fast[1], v[1])
    assert slow[3].abs().max() > 4  # a large deformation: 13 compositions, up to 4.5 voxels
    inner = (slice(None), slice(None)) + (slice(4, -4),) * 3
    assert (fast - slow)[inner].abs().max() < 0.1 * slow[3].abs().max()
    assert float((fast - slow).abs().mean() / slow[3].abs().mean()) < 0.01
    assert abs(float(fast[3].abs().mean() / slow[3].abs().mean()) - 1) < 0.03


def test_jacobian_of_affine_maps():
    shape = (10, 12, 14)
    x = fields.identity_grid(shape, dtype=torch.float64)
    for matrix in (np.diag([1.2, 0.8, 1.1]), np.array([[1, 0.3, 0], [0, 1, 0], [0.2, 0, 0.9]]),
                   np.diag([-1.0, 1.0, 1.0])):
        a = torch.as_tensor(matrix)
        u = torch.einsum("rc,bc...->br...", a, x) - x
        det = fields.jacobian_determinant(u)
        np.testing.assert_allclose(det.numpy(), np.linalg.det(matrix), atol=1e-9)
    assert fields.folding_fraction(u).item() == 1.0
    rot = torch.as_tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    x2 = fields.identity_grid((8, 8), dtype=torch.float64)
    det2 = fields.jacobian_determinant(torch.einsum("rc,bc...->br...", rot, x2) - x2)
    np.testing.assert_allclose(det2.numpy(), 1.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 3, 37, 41, 43), (1, 1, 128, 64, 16), (1, 2, 301, 300), (2, 3, 40, 41, 42)])
def test_threaded_grid_sample_equals_pytorch_bit_for_bit(shape):
    g = torch.Generator().manual_seed(0)
    nd = len(shape) - 2
    image = torch.randn(shape, generator=g)
    grid = torch.rand((shape[0],) + shape[2:] + (nd,), generator=g) * 2.2 - 1.1
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # three parts: rows not divisible by the part count are padded and cut
    try:
        for mode in ["bilinear", "nearest"] + (["bicubic"] if nd == 2 else []):
            for padding in ("zeros", "border"):
                expected = F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)
                assert torch.equal(fields.grid_sample(image, grid, mode, padding), expected)
    finally:
        torch.set_num_threads(threads)


def test_batch_one_grid_sample_is_split_into_one_part_per_thread(monkeypatch):
    """PyTorch's CPU kernel runs one batch element on one thread: a large batch-1 call is split into as
    many batch elements as there are threads; small calls and batches are passed through."""
    batches = []
    original = F.grid_sample
    monkeypatch.setattr(fields.F, "grid_sample", lambda image, grid, **kw: batches.append(grid.shape[0]) or original(image, grid, **kw))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fields.warp(torch.zeros(1, 1, 64, 64, 64), torch.zeros(1, 3, 64, 64, 64))
        fields.warp(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 3, 8, 8, 8))
        fields.warp(torch.zeros(2, 1, 64, 64, 64), torch.zeros(2, 3, 64, 64, 64))
    finally:
        torch.set_num_threads(threads)
    assert batches == [2, 1, 2]
