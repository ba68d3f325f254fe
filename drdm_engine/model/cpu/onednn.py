"""The oneDNN operators the fast layers call, each in the one form they are called in.

Most are private to PyTorch (``torch.ops.mkldnn.*``, the operators inductor's CPU freezing uses) and
may change between releases: :mod:`.probe` tries each of them before the layers use it. ``layer`` is a
PyTorch convolution or transposed convolution whose geometry (padding, stride, dilation, groups) the
call takes; weights ``(C_out, C_in / groups, *kernel)`` (transposed: ``(C_in, C_out / groups, *kernel)``).
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_geometry(layer: nn.Module) -> tuple[list[int], list[int], list[int], int]:
    """Padding, stride, dilation and groups as oneDNN's operators take them."""
    return list(layer.padding), list(layer.stride), list(layer.dilation), layer.groups


def _transposed_geometry(layer: nn.Module) -> tuple[list[int], list[int], list[int], list[int], int]:
    """Padding, output padding, stride, dilation and groups as oneDNN's operators take them."""
    return list(layer.padding), list(layer.output_padding), list(layer.stride), list(layer.dilation), layer.groups


def convolution(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's differentiable convolution of ``x`` (what PyTorch itself calls for large inputs)."""
    return torch.mkldnn_convolution(x, weight, bias, layer.padding, layer.stride, layer.dilation, layer.groups)


def packed_weight(layer: nn.Module, weight: torch.Tensor, input_shape: list[int]) -> torch.Tensor:
    """``weight`` reordered into oneDNN's blocked layout for inputs of ``input_shape``."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight, *_conv_geometry(layer), input_shape)


def inference_convolution(layer: nn.Module, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                          activation: str = "none", scalars: list[float] | None = None) -> torch.Tensor:
    """oneDNN's inference convolution of ``x`` with :func:`packed_weight`, then ``activation``
    (``"none"``, ``"leaky_relu"`` with ``scalars == [slope]``) as it writes."""
    return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, *_conv_geometry(layer), activation,
                                                   scalars or [], None)


def inference_convolution_add_(layer: nn.Module, other: torch.Tensor, x: torch.Tensor, packed: torch.Tensor,
                               bias: torch.Tensor | None) -> torch.Tensor:
    """``other += convolution(x)``, oneDNN accumulating into ``other`` (channels-last, the output's
    shape); ``other`` returned."""
    return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, packed, bias, *_conv_geometry(layer), "add",
                                                           None, None, [], None)


def packed_transposed_weight(layer: nn.Module, weight: torch.Tensor, input_shape: list[int]) -> torch.Tensor:
    """A transposed convolution's ``weight`` reordered for inputs of ``input_shape``."""
    return torch.ops.mkldnn._reorder_convolution_transpose_weight(weight, *_transposed_geometry(layer), input_shape)


def inference_transposed_convolution(layer: nn.Module, x: torch.Tensor, packed: torch.Tensor,
                                     bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's inference transposed convolution of ``x`` with :func:`packed_transposed_weight`."""
    return torch.ops.mkldnn._convolution_transpose_pointwise(x, packed, bias, *_transposed_geometry(layer), "none",
                                                             [], None)
