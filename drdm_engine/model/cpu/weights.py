"""Weights reordered into oneDNN's blocked layout once per block of unchanged weights."""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn

_FROZEN: contextvars.ContextVar[dict[tuple, torch.Tensor] | None] = contextvars.ContextVar("drdm_frozen_weights",
                                                                                          default=None)


@contextlib.contextmanager
def frozen_weights() -> Iterator[None]:
    """Inside this block the network's weights do not change: each fast layer reorders its weights
    into oneDNN's blocked layout once per input shape and keeps them until the block ends (PyTorch's
    own call, and a fast layer outside such a block, reorder them on every call: 25 us of a 0.7 ms 2D
    10-channel convolution). Recovery runs inside one (``sampler.recover``)."""
    token = _FROZEN.set({})
    try:
        yield
    finally:
        _FROZEN.reset(token)


def packed(layer: nn.Module, x: torch.Tensor, reorder: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``reorder(layer.weight)`` for inputs shaped like ``x``, once per :func:`frozen_weights` block
    (again if the weight tensor is replaced or written in place, e.g. ``load_state_dict``)."""
    cache = _FROZEN.get()
    weight = layer.weight
    if cache is None:
        return reorder(weight)
    key = (layer, tuple(x.shape), weight.data_ptr(), weight._version)
    if key not in cache:
        cache[key] = reorder(weight)
    return cache[key]
