"""Regression guards on the amount of work sampling does (counts, not timings)."""
from __future__ import annotations

import math

import pytest
import torch

from drdm_engine.core import fields
from drdm_engine.core.diffusion import DiffusionSchedule
from drdm_engine.model import sampler
from drdm_engine.model.cpu.routes import X86, conv_route, reference_layers
from drdm_engine.model.cpu.weights import frozen_weights
from drdm_engine.model.network import RecResACNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def composition_counter(monkeypatch):
    """Counts calls of ``fields.compose`` (and the batch elements they cover)."""
    calls: list[int] = []
    original = fields.compose

    def counting(a, b, padding="border"):
        calls.append(a.shape[0])
        return original(a, b, padding)

    monkeypatch.setattr(fields, "compose", counting)
    return calls


def _field(batch: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 2, side, side), generator=g) * 0.3


@pytest.mark.parametrize("n", [1, 2, 7, 64, 148, 200])
def test_power_uses_logarithmic_compositions(composition_counter, n):
    fields.power(_field(2), torch.tensor([n, n]))
    assert len(composition_counter) <= 2 * max(1, math.ceil(math.log2(n)))


def test_power_mixed_exponents_stay_logarithmic(composition_counter):
    fields.power(_field(3), torch.tensor([200, 3, 0]))
    assert sum(composition_counter) <= 2 * 2 * math.ceil(math.log2(200))  # per sample: O(log2 n) compositions


def test_power_sequential_is_the_linear_baseline(composition_counter):
    fields.power_sequential(_field(1), torch.tensor([37]))
    assert len(composition_counter) == 37


class _CallCounter:
    """Forward hook recording the batch size of every network call."""

    def __init__(self, model: torch.nn.Module):
        self.batches: list[int] = []
        model.register_forward_hook(lambda _m, args, _out: self.batches.append(args[0].shape[0]))


def _tiny_model(timesteps: int) -> RecResACNet:
    torch.manual_seed(0)
    return RecResACNet(2, timesteps=timesteps).eval()


@pytest.mark.parametrize("schedule, calls", [("published", 10), ("from-depth", 5)])
def test_network_calls_per_sample(schedule, calls):
    model = _tiny_model(10)
    counter = _CallCounter(model)
    image = torch.rand(1, 1, 16, 16)
    settings = sampler.RecoverySettings(schedule=schedule)
    sampler.sample_fields(image, 1, 4, model, DiffusionSchedule(timesteps=10, control_size=16), settings,
                          torch.Generator().manual_seed(1))
    assert counter.batches == [1] * calls


def test_batched_sampling_calls_network_once_per_step():
    model = _tiny_model(6)
    counter = _CallCounter(model)
    sampler.sample_fields(torch.rand(1, 1, 16, 16), 3, 2, model, DiffusionSchedule(timesteps=6, control_size=16),
                          generator=torch.Generator().manual_seed(2))
    assert counter.batches == [3] * 6


def test_reference_path_is_one_sample_at_a_time():
    model = _tiny_model(4)
    counter = _CallCounter(model)
    sampler.sample_fields_reference(torch.rand(1, 1, 16, 16), 2, 1, model,
                                    DiffusionSchedule(timesteps=4, control_size=16),
                                    generator=torch.Generator().manual_seed(3))
    assert counter.batches == [1] * 8


def test_fast_forward_field_integrates_with_binary_exponentiation(composition_counter):
    sampler.sample_fields(torch.rand(1, 1, 16, 16), 2, 79, None, DiffusionSchedule(control_size=16),
                          generator=torch.Generator().manual_seed(4))
    assert sum(composition_counter) <= 2 * 2 * math.ceil(math.log2(200))  # per sample: O(log2 n) compositions


def _convolution_ops(model: RecResACNet, image: torch.Tensor) -> set[str]:
    """Names of the ATen convolution kernels one network pass runs (profiler, no timings)."""
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.unet(image, torch.tensor([3] * image.shape[0]))
    wrappers = {"aten::conv2d", "aten::conv3d", "aten::convolution", "aten::_convolution",
                "aten::conv_transpose2d", "aten::conv_transpose3d"}
    return {e.key for e in prof.key_averages() if "conv" in e.key and e.key not in wrappers}


ONEDNN_INFERENCE = {"mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_",
                    "mkldnn::_convolution_transpose_pointwise"}
WEIGHT_REORDERS = {"mkldnn::_reorder_convolution_weight", "mkldnn::_reorder_convolution_transpose_weight"}


@pytest.mark.parametrize("ndims, side", [(2, 16), (3, 16)])
@pytest.mark.slow
def test_every_fp32_convolution_runs_through_onednn(ndims, side):
    """A batch-1 pass on a small grid: PyTorch's own dispatch sends the 3x3 convolutions to its slow
    kernels (checked, so that the guard means something); the fast layers send every convolution,
    transposed ones included, to oneDNN's inference kernels, with the weights reordered once inside a
    ``frozen_weights`` block."""
    torch.manual_seed(0)
    model = RecResACNet(ndims, timesteps=6).eval()
    image = torch.rand((1, 1) + (side,) * ndims)
    _convolution_ops(model, image)  # the oneDNN probe runs at first use, outside the counts
    with reference_layers():
        assert any(op.startswith("aten::slow_conv") or op.startswith("aten::thnn_conv")
                   for op in _convolution_ops(model, image))
    if not X86:  # oneDNN's ARM builds: the differentiable oneDNN convolution throughout
        assert _convolution_ops(model, image) <= {"aten::mkldnn_convolution", "aten::mkldnn_convolution_transpose"}
        return
    assert _convolution_ops(model, image) == ONEDNN_INFERENCE | WEIGHT_REORDERS
    with frozen_weights():
        _convolution_ops(model, image)
        assert _convolution_ops(model, image) == ONEDNN_INFERENCE


def test_training_convolutions_run_through_onednn():
    """With gradients (training) the fast layers call oneDNN's differentiable convolution."""
    torch.manual_seed(0)
    model = RecResACNet(3, timesteps=6).train()
    model.unet(torch.rand(1, 1, 16, 16, 16), torch.tensor([3]))  # the oneDNN probe runs at first use
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.unet(torch.rand(1, 1, 16, 16, 16), torch.tensor([3]))
    assert "aten::mkldnn_convolution" in {e.key for e in prof.key_averages()}
    assert not any("slow_conv" in e.key for e in prof.key_averages())


def test_convolution_route():
    x = torch.rand(1, 20, 8, 8, 8)
    assert conv_route(x) == "onednn"
    assert conv_route(x.double()) == "torch"
    with reference_layers():
        assert conv_route(x) == "torch"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv_route(x) == "torch"
