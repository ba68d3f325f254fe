"""Convolutions that call oneDNN directly on the CPU in fp32 (:func:`.routes.conv_route`), output kept
channels-last; the same parameters, names and maths as the PyTorch layers they extend."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn, probe
from .layout import channels_last, layout
from .routes import conv_route, inference_kernels
from .weights import packed


class _FastConv:
    """Convolution whose fp32 CPU calls go to oneDNN whatever their size; without gradients on x86,
    oneDNN's inference kernels (:func:`.routes.inference_kernels`; weights reordered once per
    :func:`.weights.frozen_weights` block), and two fused forms the residual blocks use: :meth:`leaky`
    (convolution, then LeakyReLU) and :meth:`add_into` (``other += convolution``)."""

    def _keeps_shape(self, other: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether this convolution of ``x`` has ``other``'s shape (stride 1, size-preserving padding)."""
        same_size = all(s == 1 and 2 * p == d * (k - 1) for s, p, d, k in
                        zip(self.stride, self.padding, self.dilation, self.kernel_size))
        return same_size and other.shape == (x.shape[0], self.out_channels, *x.shape[2:])

    def _packed_for(self, x: torch.Tensor) -> torch.Tensor:
        return packed(self, x, lambda weight: onednn.packed_weight(self, weight, list(x.shape)))

    def _takes_inference_kernels(self, x: torch.Tensor) -> bool:
        """:func:`.routes.inference_kernels` for this layer (zero padding, the oneDNN operators' only mode)."""
        return self.padding_mode == "zeros" and inference_kernels(x)

    def _inference(self, x: torch.Tensor, bias: torch.Tensor | None, activation: str,
                   scalars: list[float]) -> torch.Tensor:
        """oneDNN's inference convolution of ``x`` with the post-op ``activation``, output channels-last."""
        return channels_last(onednn.inference_convolution(self, x, self._packed_for(x), bias, activation, scalars))

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if conv_route(x) != "onednn" or self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        if weight is self.weight and inference_kernels(x):
            return self._inference(x, bias, "none", [])
        return channels_last(onednn.convolution(self, x, weight, bias))

    def leaky(self, x: torch.Tensor, slope: float) -> torch.Tensor:
        """``leaky_relu(self(x), slope)``, the activation applied by oneDNN as the convolution writes."""
        if not self._takes_inference_kernels(x):
            return F.leaky_relu_(self(x), slope)
        return self._inference(x, self.bias, "leaky_relu", [slope])

    def add_into(self, other: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``other += self(x)`` in place (oneDNN accumulates into ``other``, channels-last), ``other``
        returned; ``other`` must be a tensor nothing else reads."""
        if (not self._takes_inference_kernels(x) or not self._keeps_shape(other, x)
                or not other.is_contiguous(memory_format=layout(other))):
            return other.add_(self(x))
        return onednn.inference_convolution_add_(self, other, x, self._packed_for(x), self.bias)


class _FastConvTranspose:
    """Transposed convolution that, without gradients on an x86 CPU in fp32, runs oneDNN's inference
    kernel (weights reordered once per :func:`.weights.frozen_weights` block), output channels-last."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (output_size is not None or self.padding_mode != "zeros"
                or not inference_kernels(x, probe.INFERENCE_TRANSPOSED)):
            return super().forward(x, output_size)
        weight = packed(self, x, lambda w: onednn.packed_transposed_weight(self, w, list(x.shape)))
        return channels_last(onednn.inference_transposed_convolution(self, x, weight, self.bias))


class Conv2d(_FastConv, nn.Conv2d):
    """:class:`nn.Conv2d` with the fast-layer dispatch."""


class Conv3d(_FastConv, nn.Conv3d):
    """:class:`nn.Conv3d` with the fast-layer dispatch."""


class ConvTranspose2d(_FastConvTranspose, nn.ConvTranspose2d):
    """:class:`nn.ConvTranspose2d` with the fast-layer dispatch."""


class ConvTranspose3d(_FastConvTranspose, nn.ConvTranspose3d):
    """:class:`nn.ConvTranspose3d` with the fast-layer dispatch."""
