"""The fast CPU layer set: :class:`..layers.Layers` with oneDNN convolutions, the channels-last instance
norm, and the element-wise steps written into the fresh tensors they are given where no gradient is
recorded (the same sums in the same order: no full-size allocation but the convolutions' inputs).
Training and :func:`.routes.reference_layers` keep the published steps."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Layers
from . import heap
from .convolutions import Conv2d, Conv3d, ConvTranspose2d, ConvTranspose3d
from .layout import layout
from .norm import InstanceNorm2d, InstanceNorm3d
from .routes import in_place, reference_layers
from .weights import frozen_weights


class FastLayers(Layers):
    """The layers of this package; each step as :class:`..layers.Layers` states it, written into
    ``fresh`` where :func:`.routes.in_place`."""

    def conv(self, ndims: int) -> type[nn.Module]:
        return Conv2d if ndims == 2 else Conv3d

    def conv_transpose(self, ndims: int) -> type[nn.Module]:
        return ConvTranspose2d if ndims == 2 else ConvTranspose3d

    def norm(self, ndims: int) -> type[nn.Module]:
        return InstanceNorm2d if ndims == 2 else InstanceNorm3d

    def add(self, fresh: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return fresh.add_(emb) if in_place() else super().add(fresh, emb)

    def multiply(self, fresh: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return fresh.mul_(emb) if in_place() else super().multiply(fresh, emb)

    def concat_add(self, skip: torch.Tensor, fresh: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """On the CPU each part's sum is written straight into its channels of one channels-last tensor
        (one full-size pass instead of two; the same sums)."""
        if not in_place() or skip.device.type != "cpu":
            return super().concat_add(skip, fresh, emb)
        split = skip.shape[1]
        dtype = torch.promote_types(torch.promote_types(skip.dtype, fresh.dtype), emb.dtype)
        out = torch.empty((skip.shape[0], split + fresh.shape[1], *skip.shape[2:]), dtype=dtype,
                          memory_format=layout(skip))
        torch.add(skip, emb[:, :split], out=out[:, :split])
        torch.add(fresh, emb[:, split:], out=out[:, split:])
        return out

    def normalise(self, norm: nn.Module, fresh: torch.Tensor) -> torch.Tensor:
        return norm.normalise_(fresh) if in_place() else super().normalise(norm, fresh)

    def conv_act(self, conv: nn.Module, x: torch.Tensor, act: nn.LeakyReLU) -> torch.Tensor:
        """The activation applied by oneDNN as the convolution writes."""
        return conv.leaky(x, act.negative_slope) if in_place() else super().conv_act(conv, x, act)

    def residual(self, conv: nn.Module, x: torch.Tensor, fresh: torch.Tensor, act: nn.LeakyReLU) -> torch.Tensor:
        """The convolution accumulated into ``fresh`` by oneDNN, then the activation in place."""
        if not in_place():
            return super().residual(conv, x, fresh, act)
        return F.leaky_relu_(conv.add_into(fresh, x), act.negative_slope)

    def reference(self) -> contextlib.AbstractContextManager:
        return reference_layers()

    @contextlib.contextmanager
    def recovery(self, device: torch.device) -> Iterator[None]:
        """Weights reordered once (:func:`.weights.frozen_weights`) and, on the CPU, freed memory kept
        for the next layers (:mod:`.heap`)."""
        with frozen_weights(), heap.retained_on(device):
            yield

    def training(self, device: torch.device) -> contextlib.AbstractContextManager:
        """On the CPU, freed memory kept for the next step (:mod:`.heap`)."""
        return heap.retained_on(device)


FAST = FastLayers()
