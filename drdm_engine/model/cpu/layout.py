"""Channels-last, the memory layout the fast layers keep throughout (oneDNN's fastest for these
convolutions)."""
from __future__ import annotations

import torch


def layout(x: torch.Tensor) -> torch.memory_format:
    """The channels-last memory format of ``x``'s rank (``(B, C, H, W)`` or ``(B, C, D, H, W)``)."""
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last layout of its rank."""
    return x.contiguous(memory_format=layout(x))
