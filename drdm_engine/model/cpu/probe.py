"""Which of the oneDNN operators of :mod:`.onednn` work on the installed torch, found at first use.

Per kind of call and number of spatial dimensions, the operators are looked up and run once on a tiny
input (in the grad mode they serve, global random state untouched), and their results compared with
PyTorch's own layer. A kind whose operator is missing, fails or differs is not used for the rest of the
process: the fast layers take their next route for it (:mod:`.routes`), and one line says so on the
``drdm_engine.model.cpu.probe`` logger at WARNING (Python's logging rather than ``warnings``: without a
logging setup it still reaches stderr, in the CLI and in Slicer's log, once per process; applications
route or silence it like any library's log).

Measured (``notes/torch_versions.md``): torch 2.2-2.3 lack the 3D inference convolutions (their weight
reorder takes 2D geometry only), torch 2.4 the 3D inference transposed convolution.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from .layout import channels_last

LOG = logging.getLogger(__name__)

Pairs = Iterator[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Trial:
    """One kind of call: the operators it needs (namespace in ``torch.ops``, name), a run yielding
    (oneDNN's result, PyTorch's) pairs for ``ndims``, and what runs instead when it fails."""

    operators: tuple[tuple[str, str], ...]
    run: Callable[[int], Pairs]
    instead: str


def _input(ndims: int, channels: int = 3, side: int = 6) -> torch.Tensor:
    """A channels-last batch of 2 random images ``(2, channels, side, ...)``."""
    return channels_last(torch.randn((2, channels) + (side,) * ndims))


def _convolutions(ndims: int) -> list[nn.Module]:
    """The network's convolution shapes in small: dilated size-keeping, and strided downsampling."""
    conv = nn.Conv2d if ndims == 2 else nn.Conv3d
    return [conv(3, 4, 3, padding=3, dilation=3), conv(3, 4, 4, 2, 1)]


def _differentiable(ndims: int) -> Pairs:
    """The differentiable convolution's output and input gradient against PyTorch's."""
    with torch.inference_mode(False), torch.enable_grad():
        for conv in _convolutions(ndims):
            x = _input(ndims).requires_grad_()
            got = onednn.convolution(conv, x, conv.weight, conv.bias)
            expected = conv(x)
            yield got, expected
            yield (torch.autograd.grad(got.square().sum(), x)[0],
                   torch.autograd.grad(expected.square().sum(), x)[0])


def _inference(ndims: int) -> Pairs:
    """The inference convolution, plain, with LeakyReLU, and accumulating into a tensor."""
    with torch.inference_mode():
        x = _input(ndims)
        for conv in _convolutions(ndims):
            packed = onednn.packed_weight(conv, conv.weight, list(x.shape))
            expected = conv(x)
            yield onednn.inference_convolution(conv, x, packed, conv.bias), expected
            yield (onednn.inference_convolution(conv, x, packed, conv.bias, "leaky_relu", [0.1]),
                   F.leaky_relu(expected, 0.1))
            if expected.shape == (2, 4) + x.shape[2:]:
                other = _input(ndims, channels=4)
                yield onednn.inference_convolution_add_(conv, other.clone(), x, packed, conv.bias), other + expected


def _inference_transposed(ndims: int) -> Pairs:
    """The inference transposed convolution (the network's upsampling shape) against PyTorch's."""
    with torch.inference_mode():
        layer = (nn.ConvTranspose2d if ndims == 2 else nn.ConvTranspose3d)(3, 4, 4, 2, 1)
        x = _input(ndims)
        packed = onednn.packed_transposed_weight(layer, layer.weight, list(x.shape))
        yield onednn.inference_transposed_convolution(layer, x, packed, layer.bias), layer(x)


CONVOLUTION = "convolution"
INFERENCE_CONVOLUTION = "inference convolution"
INFERENCE_TRANSPOSED = "inference transposed convolution"

TRIALS = {
    CONVOLUTION: Trial((("aten", "mkldnn_convolution"),), _differentiable, "PyTorch's own convolution"),
    INFERENCE_CONVOLUTION: Trial((("mkldnn", "_reorder_convolution_weight"), ("mkldnn", "_convolution_pointwise"),
                                  ("mkldnn", "_convolution_pointwise_")), _inference,
                                 "oneDNN's differentiable convolution"),
    INFERENCE_TRANSPOSED: Trial((("mkldnn", "_reorder_convolution_transpose_weight"),
                                 ("mkldnn", "_convolution_transpose_pointwise")), _inference_transposed,
                                "PyTorch's own transposed convolution"),
}


def lookup(namespace: str, name: str) -> object | None:
    """The operator ``torch.ops.<namespace>.<name>``, or None when this torch has none of that name."""
    return getattr(getattr(torch.ops, namespace), name, None)


def _problem(trial: Trial, ndims: int) -> str | None:
    """Why ``trial`` cannot be used for ``ndims`` (a missing operator, an error, a difference), or None."""
    missing = [f"{space}.{name}" for space, name in trial.operators if lookup(space, name) is None]
    if missing:
        return "missing " + ", ".join(missing)
    try:
        with torch.random.fork_rng(devices=[]), torch.autocast("cpu", enabled=False):
            torch.manual_seed(0)
            for got, expected in trial.run(ndims):
                if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
                    return f"differs from PyTorch's layer by {(got - expected).abs().max():.2g}"
    except Exception as error:  # whatever a private operator raises, it is not used
        return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
    return None


_works: dict[tuple[str, int], bool] = {}
_lock = threading.Lock()


def works(kind: str, ndims: int) -> bool:
    """Whether the fast layers may call oneDNN for ``kind`` (a key of :data:`TRIALS`) with ``ndims``
    spatial dimensions: tried once per process, at the first question."""
    answer = _works.get((kind, ndims))
    if answer is not None:
        return answer
    with _lock:
        if (kind, ndims) not in _works:
            problem = _problem(TRIALS[kind], ndims)
            if problem is not None:
                LOG.warning("torch %s: oneDNN %dD %s not used (%s); %s runs instead", torch.__version__, ndims,
                            kind, problem, TRIALS[kind].instead)
            _works[kind, ndims] = problem is None
        return _works[kind, ndims]
