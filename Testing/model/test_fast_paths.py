"""Fast sampling paths against the reference path (small grids, fp32 tolerances)."""
from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drdm_engine.core import fields
from drdm_engine.core.diffusion import DiffusionSchedule, _integrate_to_image, _to_image_grid, forward_fields
from drdm_engine.model import sampler
from drdm_engine.model.cpu.convolutions import Conv2d, Conv3d, ConvTranspose2d, ConvTranspose3d
from drdm_engine.model.cpu.layout import channels_last, layout
from drdm_engine.model.cpu.norm import InstanceNorm3d, from_voxel_rows, row_channel_means, voxel_rows
from drdm_engine.model.cpu.routes import reference_layers
from drdm_engine.model.cpu.weights import frozen_weights
from drdm_engine.model.network import RecResACNet

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


def test_training_after_inference_on_the_same_grid():
    """The cached grid constants made during an inference pass must serve a later training pass."""
    model = _model(2)
    image = torch.rand(1, 1, 24, 24)
    with torch.inference_mode():
        model(image, torch.tensor([3]))
    model.train()(image, torch.tensor([3])).square().sum().backward()
    assert model.conv_out.weight.grad is not None


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
@pytest.mark.slow
def test_fast_recovery_matches_reference_recovery(ndims, side):
    """8 recovery steps of a random network amplify the fast layers' 1e-6 rounding differences (as
    batching does: 4 vox at one 2D pixel), so the fields are compared on average."""
    image, field = _start(1, ndims, side)
    expected = _recover(sampler.REFERENCE, image, field)
    got = _recover(sampler.RecoverySettings(), image, field)
    assert (got - expected).abs().mean() < 0.01 * expected.abs().mean()


@pytest.mark.parametrize("ndims, side, batch", [(2, 32, 1), (3, 16, 1), (3, 16, 2)])
def test_fast_layers_match_pytorch_layers(ndims, side, batch):
    model = _model(ndims)
    image = torch.rand((batch, 1) + (side,) * ndims, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([7, 3][:batch])
    with torch.no_grad(), reference_layers():
        expected = model.unet(image, t)
    with torch.inference_mode():
        got = model.unet(image, t)
    assert (got - expected).abs().max() <= 1e-5
    layout = torch.channels_last_3d if ndims == 3 else torch.channels_last
    assert got.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("batch", [1, 2])
def test_fast_instance_norm_centres_features_far_from_zero(batch):
    """Features whose mean is 300 times their spread: PyTorch's channels-last group norm gets these
    wrong by 2.5 (of a unit-variance output); the fast norm must stay as accurate as the instance norm."""
    norm = InstanceNorm3d(10, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(batch, 10, 32, 32, 32, generator=torch.Generator().manual_seed(4)) * 0.01 + 3)
    exact = F.instance_norm(x.double(), weight=norm.weight.double(), bias=norm.bias.double()).float()
    with torch.no_grad():
        got = norm(x.contiguous(memory_format=torch.channels_last_3d))
    assert (got - exact).abs().max() <= 1e-4


@pytest.mark.slow
def test_fast_layers_train_like_pytorch_layers():
    model = _model(3).train()
    image = torch.rand(1, 1, 16, 16, 16)
    grads = []
    for context in (reference_layers(), contextlib.nullcontext()):
        model.zero_grad()
        with context:
            model(image, torch.tensor([3])).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()


@pytest.mark.slow
def test_batched_recovery_matches_one_at_a_time():
    image, field = _start(3, 3, 16)
    batched = _recover(sampler.RecoverySettings(), image, field)
    single = torch.cat([_recover(sampler.RecoverySettings(), image[i:i + 1], field[i:i + 1]) for i in range(3)])
    assert (batched - single).abs().max() < 1e-4


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


@pytest.mark.slow
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


def test_per_sample_integration_equals_the_whole_batch():
    """On the CPU the forward fields are integrated and mapped one batch element at a time: the same
    values as the whole batch at once, bit for bit (mixed exponents too)."""
    schedule = DiffusionSchedule(control_size=16)
    v = torch.randn((3, 3, 16, 16, 16), generator=torch.Generator().manual_seed(2)) * 0.3
    for n in (torch.tensor([37, 37, 37]), torch.tensor([5, 60, 1])):
        expected = _to_image_grid(fields.power(v, n), 24, schedule)
        assert torch.equal(_integrate_to_image(v, n, 24, schedule, fields.power), expected)


@pytest.mark.parametrize("ndims, batch, dilation", [(2, 1, 1), (2, 2, 3), (3, 1, 3), (3, 2, 1)])
def test_fused_convolution_forms_equal_the_separate_operations(ndims, batch, dilation):
    """``leaky`` (activation applied by oneDNN as it writes) and ``add_into`` (oneDNN accumulating into
    the residual) give the very sums of the separate convolution, activation and addition."""
    torch.manual_seed(1)
    conv = (Conv2d if ndims == 2 else Conv3d)(10, 10, 3, padding=dilation, dilation=dilation)
    shape = (batch, 10) + (12,) * ndims
    x = channels_last(torch.randn(shape))
    other = channels_last(torch.randn(shape))
    with torch.inference_mode():
        expected_leaky = F.leaky_relu(conv(x), 0.01)
        expected_sum = other + conv(x)
        assert torch.equal(conv.leaky(x, 0.01), expected_leaky)
        got = conv.add_into(other, x)
    assert got is other and torch.equal(got, expected_sum)


@pytest.mark.parametrize("ndims", [2, 3])
def test_fast_transposed_convolution_matches_pytorch(ndims):
    torch.manual_seed(2)
    layer = (ConvTranspose2d if ndims == 2 else ConvTranspose3d)(20, 10, 4, 2, 1)
    x = channels_last(torch.randn((2, 20) + (6,) * ndims))
    with torch.inference_mode():
        got = layer(x)
        with reference_layers():
            expected = layer(x)
    assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-5
    assert got.is_contiguous(memory_format=layout(got))


@pytest.mark.parametrize("shape", [(1, 10, 8, 8, 8), (2, 20, 9, 9), (2, 3, 5, 7, 3), (1, 40, 1, 1)])
def test_voxel_rows_are_a_view_that_gives_channel_means_and_round_trips(shape):
    x = channels_last(torch.randn(shape) * 3 + 7)
    rows, k = voxel_rows(x)
    assert rows.data_ptr() == x.data_ptr() and rows.shape[-1] == k * shape[1]
    expected = x.double().mean(tuple(range(2, x.dim())))
    assert (row_channel_means(rows, k) - expected).abs().max() <= 1e-5
    back = from_voxel_rows(rows.clone(), x)
    assert torch.equal(back, x) and back.is_contiguous(memory_format=layout(x))


def test_in_place_instance_norm_equals_the_fast_norm():
    norm = InstanceNorm3d(10, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = channels_last(torch.randn(2, 10, 8, 8, 8) * 2 + 1)
    with torch.inference_mode():
        expected = norm(x)
        got = norm.normalise_(x)
    assert got is x and torch.equal(got, expected)


def test_frozen_weights_reorder_once_and_never_outlive_their_block(monkeypatch):
    """Inside a block each layer reorders its weights once per input shape; a later block sees the
    weights as they are then (a training step between two recoveries)."""
    model = _model(2)
    image, t = torch.rand(1, 1, 16, 16), torch.tensor([3])
    with torch.inference_mode():
        model(image, t)  # the oneDNN probe runs at first use, before the count
    reorders = []
    original = torch.ops.mkldnn._reorder_convolution_weight
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_convolution_weight",
                        lambda *args: reorders.append(1) or original(*args))
    convolutions = sum(isinstance(m, Conv2d) for m in model.modules())
    with torch.inference_mode(), frozen_weights():
        before = model(image, t)
        model(image, t)
    assert len(reorders) == convolutions  # rec_num 2: two passes, one reorder each
    with torch.no_grad():
        model.conv_out.weight.mul_(2)
    with torch.inference_mode(), frozen_weights():
        after = model(image, t)
    with torch.no_grad(), reference_layers():
        expected = model(image, t)
    assert not torch.equal(after, before) and (after - expected).abs().max() <= 1e-5


def test_one_step_for_the_whole_batch_equals_a_step_per_sample():
    model = _model(2)
    image = torch.rand(2, 1, 16, 16)
    with torch.inference_mode():
        one, each = model(image, torch.tensor(3)), model(image, torch.tensor([3, 3]))
    assert one.shape == each.shape and (one - each).abs().max() <= 1e-6  # the embedding MLP at batch 1 vs 2


def test_weights_loaded_inside_a_frozen_block_are_used():
    model, other = _model(2), RecResACNet(2, timesteps=8).eval()
    image, t = torch.rand(1, 1, 16, 16), torch.tensor([3])
    with torch.inference_mode(), frozen_weights():
        model(image, t)
        model.load_state_dict(other.state_dict())
        got = model(image, t)
    with torch.no_grad(), reference_layers():
        expected = other(image, t)
    assert (got - expected).abs().max() <= 1e-5
