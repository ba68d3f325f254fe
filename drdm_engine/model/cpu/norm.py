"""Instance norm that keeps the channels-last layout, on voxel rows that vectorise."""
from __future__ import annotations

import math

import torch
from torch import nn

from .layout import channels_last, layout
from .routes import fast


class _FastInstanceNorm:
    """Instance norm that, in the fast layers, keeps the channels-last layout: per-sample, per-channel
    mean, then the mean square of the centred values (two passes, as accurate as PyTorch's instance
    norm), eps, per-channel affine. PyTorch's instance norm copies a channels-last input to the
    contiguous layout, and its channels-last group and batch norms lose the variance of features whose
    mean is large against their spread (error 2.5 on unit-variance output, measured). CPU fp32 only:
    a bf16 input (autocast; PyTorch accumulates its statistics in fp32) and a GPU take PyTorch's
    instance norm."""

    def _runs_fast(self, x: torch.Tensor) -> bool:
        """Whether the fast variant serves ``x``: fast layers, CPU, fp32, affine, no running stats."""
        return (fast() and x.device.type == "cpu" and x.dtype == torch.float32 and not self.track_running_stats
                and self.affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._runs_fast(x):
            return super().forward(x)
        return self._normalise(channels_last(x), in_place=False)

    def normalise_(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` written into ``x`` (a channels-last tensor nothing else reads; the same
        arithmetic), or ``forward(x)`` where the fast variant does not run."""
        if not self._runs_fast(x) or not x.is_contiguous(memory_format=layout(x)):
            return self(x)
        return self._normalise(x, in_place=True)

    def _normalise(self, x: torch.Tensor, in_place: bool) -> torch.Tensor:
        """Mean, then the mean square about it (two passes: accurate however far the mean lies from
        zero), then ``x * scale + (bias - mean * scale)`` in one pass (into ``x`` when ``in_place``), as
        PyTorch's instance norm applies it; every pass over :func:`voxel_rows`."""
        rows, k = voxel_rows(x)
        mean = row_channel_means(rows, k)
        variance = row_channel_means(torch.sub(rows, _tiled(mean, k)).square_(), k)
        scale = torch.rsqrt(variance.add_(self.eps)) * self.weight
        shift = torch.addcmul(self.bias, mean, scale, value=-1)
        result = torch.addcmul(_tiled(shift, k), rows, _tiled(scale, k), out=rows if in_place else None)
        return x if in_place else from_voxel_rows(result, x)


def voxel_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A channels-last ``x`` ``(B, C, *spatial)`` viewed as rows of ``k`` voxels' channels
    ``(B, voxels / k, k * C)`` (``k`` up to 16, dividing the voxel count), and ``k``.

    PyTorch runs a channels-last tensor's spatial reductions and per-channel broadcasts with the 10-40
    channels as the innermost loop, at a third of the memory's speed; rows of ``k * C`` values vectorise."""
    batch, channels, voxels = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    k = math.gcd(voxels, 16)
    return x.permute(0, *range(2, x.dim()), 1).reshape(batch, voxels // k, k * channels), k


def from_voxel_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`voxel_rows`: ``rows`` as a channels-last tensor shaped like ``like``."""
    spatial = like.shape[2:]
    return rows.view(like.shape[0], *spatial, like.shape[1]).permute(0, like.dim() - 1, *range(1, like.dim() - 1))


def row_channel_means(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample, per-channel means ``(B, C)`` of voxel rows ``(B, R, k * C)``."""
    batch, count = rows.shape[0], rows.shape[1] * k
    return rows.sum(1).view(batch, k, -1).sum(1).div_(count)


def _tiled(per_channel: torch.Tensor, k: int) -> torch.Tensor:
    """Per-channel values ``(B, C)`` or ``(C,)`` as voxel rows ``(B or 1, 1, k * C)``."""
    return per_channel.reshape(-1, 1, per_channel.shape[-1]).repeat(1, 1, k)


class InstanceNorm2d(_FastInstanceNorm, nn.InstanceNorm2d):
    """:class:`nn.InstanceNorm2d` with the fast-layer variant."""


class InstanceNorm3d(_FastInstanceNorm, nn.InstanceNorm3d):
    """:class:`nn.InstanceNorm3d` with the fast-layer variant."""
