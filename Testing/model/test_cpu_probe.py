"""The oneDNN probe: a oneDNN operator that is missing, fails or differs on the installed torch is not
used; the fast layers fall back for that kind of call with one log line, and still give the reference
outputs."""
from __future__ import annotations

import logging

import pytest
import torch

from drdm_engine.model.cpu import onednn, probe
from drdm_engine.model.cpu.routes import reference_layers
from drdm_engine.model.network import RecResACNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fresh_probe(monkeypatch, caplog):
    """The probe as at the start of a process (nothing tried yet); its log lines in ``caplog``."""
    monkeypatch.setattr(probe, "_works", {})
    caplog.set_level(logging.WARNING, logger=probe.LOG.name)
    return caplog


def _probe_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "drdm_engine.model.cpu.probe"]


def _onednn_calls(model: RecResACNet, image: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    """One pass without gradients (twice: the probe runs at the first) and the convolution ops it ran."""
    with torch.inference_mode():
        model(image, t)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = model(image, t)
    return out, {e.key for e in prof.key_averages() if "conv" in e.key}


def _reference(model: RecResACNet, image: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), reference_layers():
        return model(image, t)


def _model_and_input(ndims: int) -> tuple[RecResACNet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return RecResACNet(ndims, timesteps=8).eval(), torch.rand((2, 1) + (16,) * ndims), torch.tensor([7, 3])


@pytest.mark.parametrize("ndims", [2, 3])
@pytest.mark.parametrize("kind", sorted(probe.TRIALS))
def test_every_onednn_kind_works_on_the_pinned_torch(fresh_probe, kind, ndims):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    assert probe.works(kind, ndims)
    assert _probe_lines(fresh_probe) == []


@pytest.mark.parametrize("ndims", [2, 3])
@pytest.mark.slow
def test_missing_operators_give_pytorch_layers_and_one_line(fresh_probe, monkeypatch, ndims):
    """Every oneDNN operator reported missing: PyTorch's own convolutions throughout, in inference and
    in training, with the reference outputs and gradients; one line for the kind asked, however often."""
    monkeypatch.setattr(probe, "lookup", lambda namespace, name: None)
    model, image, t = _model_and_input(ndims)
    got, calls = _onednn_calls(model, image, t)
    assert not any(call.startswith("mkldnn::") for call in calls) and "aten::_convolution" in calls
    assert (got - _reference(model, image, t)).abs().max() <= 1e-5
    gradients = []
    for context in (torch.enable_grad(), reference_layers()):
        model.zero_grad()
        with context:
            model.train()(image[:1], t[:1]).square().sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert (gradients[0] - gradients[1]).abs().max() <= 1e-5 * gradients[1].abs().max()
    assert _probe_lines(fresh_probe) == [
        f"torch {torch.__version__}: oneDNN {ndims}D convolution not used (missing aten.mkldnn_convolution); "
        "PyTorch's own convolution runs instead"]


@pytest.mark.slow
def test_a_failing_operator_falls_back_for_its_kind_and_dimension_only(fresh_probe, monkeypatch):
    """As torch 2.4 did: the 3D inference transposed convolution raises. The other oneDNN kernels run."""
    original = onednn.inference_transposed_convolution

    def failing(layer, x, *args):
        if x.dim() == 5:
            raise RuntimeError("expected padding to be a single integer value or a list of 2 values\nmore")
        return original(layer, x, *args)

    monkeypatch.setattr(onednn, "inference_transposed_convolution", failing)
    model, image, t = _model_and_input(3)
    got, calls = _onednn_calls(model, image, t)
    assert "mkldnn::_convolution_pointwise" in calls and "mkldnn::_convolution_transpose_pointwise" not in calls
    assert "aten::conv_transpose3d" in calls
    assert (got - _reference(model, image, t)).abs().max() <= 1e-5
    assert probe.works(probe.INFERENCE_TRANSPOSED, 2)
    assert _probe_lines(fresh_probe) == [
        f"torch {torch.__version__}: oneDNN 3D inference transposed convolution not used (RuntimeError: expected "
        "padding to be a single integer value or a list of 2 values); PyTorch's own transposed convolution runs instead"]


def test_an_operator_that_differs_is_not_used(fresh_probe, monkeypatch):
    original = onednn.inference_convolution
    monkeypatch.setattr(onednn, "inference_convolution", lambda *args: original(*args) + 1e-3)
    model, image, t = _model_and_input(2)
    got, calls = _onednn_calls(model, image, t)
    assert "mkldnn::_convolution_pointwise" not in calls and "aten::mkldnn_convolution" in calls
    assert (got - _reference(model, image, t)).abs().max() <= 1e-5
    [line] = _probe_lines(fresh_probe)
    assert "2D inference convolution not used (differs from PyTorch's layer by 0.001)" in line


def test_the_probe_leaves_the_random_state_and_the_grad_mode_alone(fresh_probe):
    state = torch.get_rng_state()
    with torch.inference_mode():
        assert all(probe.works(kind, 3) for kind in probe.TRIALS)
        assert torch.is_inference_mode_enabled()
    assert torch.equal(torch.get_rng_state(), state)
