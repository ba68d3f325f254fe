"""The layers RecResACNet is built from and the element-wise steps it joins them with, as the published
network has them: PyTorch's own layers and operators.

:class:`Layers` is this set. ``model/cpu/`` holds a faster one for the CPU (same parameters, names and
maths; it may write a step's result into a ``fresh`` tensor); :mod:`.layer_choice` picks which one the
network uses, once.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class Layers:
    """PyTorch's own layers and the published steps. In the steps, ``fresh`` is a tensor a layer has
    just returned and nothing else reads; ``emb`` a per-channel term ``(B or 1, C, 1, ...)``."""

    def conv(self, ndims: int) -> type[nn.Module]:
        """The convolution class for ``ndims`` (2 or 3) spatial dimensions."""
        return nn.Conv2d if ndims == 2 else nn.Conv3d

    def conv_transpose(self, ndims: int) -> type[nn.Module]:
        """The transposed convolution class for ``ndims`` spatial dimensions."""
        return nn.ConvTranspose2d if ndims == 2 else nn.ConvTranspose3d

    def norm(self, ndims: int) -> type[nn.Module]:
        """The instance norm class for ``ndims`` spatial dimensions."""
        return nn.InstanceNorm2d if ndims == 2 else nn.InstanceNorm3d

    def add(self, fresh: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``fresh + emb``."""
        return fresh + emb

    def multiply(self, fresh: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``fresh * emb``."""
        return fresh * emb

    def concat_add(self, skip: torch.Tensor, fresh: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``cat([skip, fresh], channels) + emb``."""
        return torch.cat([skip, fresh], 1) + emb

    def normalise(self, norm: nn.Module, fresh: torch.Tensor) -> torch.Tensor:
        """``norm(fresh)``."""
        return norm(fresh)

    def conv_act(self, conv: nn.Module, x: torch.Tensor, act: nn.LeakyReLU) -> torch.Tensor:
        """``act(conv(x))``."""
        return act(conv(x))

    def residual(self, conv: nn.Module, x: torch.Tensor, fresh: torch.Tensor, act: nn.LeakyReLU) -> torch.Tensor:
        """``act(conv(x) + fresh)``."""
        return act(conv(x) + fresh)

    def reference(self) -> contextlib.AbstractContextManager:
        """Inside this block the network runs PyTorch's own layers and the published steps (this set
        always does)."""
        return contextlib.nullcontext()

    def recovery(self, device: torch.device) -> contextlib.AbstractContextManager:
        """What a recovery loop on ``device`` runs in (weights unchanged throughout); nothing here."""
        return contextlib.nullcontext()

    def training(self, device: torch.device) -> contextlib.AbstractContextManager:
        """What training steps on ``device`` run in; nothing here."""
        return contextlib.nullcontext()


PUBLISHED = Layers()
