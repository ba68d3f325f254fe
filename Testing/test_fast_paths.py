"""Fast sampling paths against the reference path (small grids, fp32 tolerances)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from drdm_engine import fields, sampler
from drdm_engine.diffusion import DiffusionSchedule, _to_image_grid, forward_fields
from drdm_engine.network import RecResACNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(ndims: int, timesteps: int = 8) -> RecResACNet:
    torch.manual_seed(0)
    return RecResACNet(ndims, timesteps=timesteps).eval()


@pytest.mark.parametrize("ndims, side", [(2, 32), (3, 16)])
def test_inference_network_equals_reference_network(ndims, side):
    model = _model(ndims)
    image = torch.rand((2, 1) + (side,) * ndims)
    t = torch.tensor([7, 3])
    with torch.no_grad():
        expected = model(image, t)
    with torch.inference_mode():
        got = model(image, t)
    assert torch.equal(got, expected)


def test_network_gradients_flow_in_training_mode():
    model = _model(2).train()
    image = torch.rand(1, 1, 16, 16, requires_grad=True)
    model(image, torch.tensor([3])).square().sum().backward()
    assert image.grad is not None and all(p.grad is not None for p in model.conv_out.parameters())


def test_compose_gradients_flow():
    a = torch.randn(1, 3, 6, 6, 6, requires_grad=True)
    b = torch.randn(1, 3, 6, 6, 6, requires_grad=True)
    fields.compose(a, b).sum().backward()
    assert a.grad is not None and b.grad is not None


def test_power_mixed_equals_per_element_power():
    v = torch.randn(3, 2, 12, 12, generator=torch.Generator().manual_seed(0)) * 0.4
    n = torch.tensor([200, 5, 0])
    mixed = fields.power(v, n)
    for i in range(3):
        assert torch.allclose(mixed[i:i + 1], fields.power(v[i:i + 1], n[i:i + 1]), atol=1e-6)


def test_power_close_to_sequential_composition():
    coarse = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.1
    v = fields.resize(coarse, 32)
    n = torch.tensor([13, 13])
    fast, sequential = fields.power(v, n), fields.power_sequential(v, n)
    assert (fast - sequential).abs().mean() < 0.01 * sequential.abs().mean()
    assert (fast - sequential).abs().max() < 0.1 * sequential.abs().max()


def _recover(settings: sampler.RecoverySettings, image: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    return sampler.recover(_model(image.dim() - 2), image, field, range(7, -1, -1), settings)


def _start(batch: int, ndims: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    image = torch.rand((1, 1) + (side,) * ndims, generator=g).expand(batch, *([-1] * (ndims + 1)))
    field, _ = forward_fields(torch.full((batch,), 6), ndims, side, DiffusionSchedule(timesteps=8, control_size=16),
                              g, with_clean=False)
    return image, field


@pytest.mark.parametrize("ndims, side", [(2, 32), (3, 16)])
def test_fast_recovery_equals_reference_recovery(ndims, side):
    image, field = _start(1, ndims, side)
    expected = _recover(sampler.REFERENCE, image, field)
    assert torch.equal(_recover(sampler.RecoverySettings(), image, field), expected)


def test_batched_recovery_matches_one_at_a_time():
    image, field = _start(3, 3, 16)
    batched = _recover(sampler.RecoverySettings(), image, field)
    single = torch.cat([_recover(sampler.REFERENCE, image[i:i + 1], field[i:i + 1]) for i in range(3)])
    assert (batched - single).abs().max() < 1e-4


@pytest.mark.parametrize("ndims, side", [(2, 32), (3, 16)])
def test_channels_last_recovery_matches_reference(ndims, side):
    image, field = _start(2, ndims, side)
    expected = _recover(sampler.REFERENCE, image, field)
    got = _recover(replace(sampler.RecoverySettings(), channels_last=True), image, field)
    assert (got - expected).abs().max() < 1e-4


def test_autocast_recovery_keeps_fp32_fields():
    image, field = _start(1, 2, 32)
    got = _recover(replace(sampler.RecoverySettings(), autocast=torch.bfloat16), image, field)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())


def test_recovery_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    image, field = _start(2, 3, 16)
    expected = _recover(sampler.RecoverySettings(), image, field)
    got = sampler.recover(_model(3).cuda(), image.cuda(), field.cuda(), range(7, -1, -1))
    assert got.device.type == "cuda" and (got.cpu() - expected).abs().max() < 1e-3


def test_published_network_parity_on_the_fast_path(reference):
    fixture = np.load(reference / "parity_2d_cmr.npz")
    model = RecResACNet(2)
    model.load_state_dict(torch.load(reference / "drdm_cmr_2d_published.pth", map_location="cpu"), strict=True)
    model.eval()
    image = torch.from_numpy(fixture["image"])[None, None]
    warped = torch.from_numpy(fixture["warped_t40"])[None, None]
    with torch.inference_mode():
        out = model(torch.cat([image, warped]), torch.tensor([40, 40]))
    assert np.abs(out[0].numpy() - fixture["net_out_clean_t40"]).max() <= 1e-5
    assert np.abs(out[1].numpy() - fixture["net_out_warped_t40"]).max() <= 1e-5


@pytest.mark.parametrize("ndims, size, side", [(2, 256, 64), (3, 32, 16), (3, 24, 16)])
def test_separable_crop_equals_published_upsample_and_crop(ndims, size, side):
    schedule = DiffusionSchedule(control_size=side)
    control = torch.randn((2, ndims) + (side,) * ndims, generator=torch.Generator().manual_seed(6))
    mode = "bilinear" if ndims == 2 else "trilinear"
    up = torch.nn.functional.interpolate(control, size=(2 * size,) * ndims, mode=mode, align_corners=False)
    crop = up[(slice(None), slice(None)) + (slice(size // 2, size // 2 + size),) * ndims]
    expected = crop * (schedule.gain(size) * size / side)
    assert torch.allclose(_to_image_grid(control, size, schedule), expected, atol=1e-5, rtol=1e-5)
