"""RecResACNet, the published DRDM recovery network (spec section 3).

Input ``(B, C, *spatial)`` with every side divisible by 8, step ``t`` ``(B,)``; output the recovery
field ``(B, nd, *spatial)`` in the published *normalised* units (voxels = side x value, channel
``c`` along tensor axis ``c``). Parameter names match the published checkpoints.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import fields

EMBED_DIM = 100
NEGATIVE_SLOPE = 1e-6

_FAST_LAYERS = contextvars.ContextVar("drdm_fast_layers", default=True)


@contextlib.contextmanager
def reference_layers() -> Iterator[None]:
    """Inside this block the network runs PyTorch's own layers (the published ops and PyTorch's own
    choice of convolution kernel); the reference path of the benches and tests. Elsewhere the fast
    layers below run."""
    token = _FAST_LAYERS.set(False)
    try:
        yield
    finally:
        _FAST_LAYERS.reset(token)


def _fast() -> bool:
    """Whether the fast layers run: outside :func:`reference_layers` and outside ``torch.compile``
    tracing (inductor picks its own kernels; checked first, so that tracing never reads the context
    variable, which it cannot)."""
    return not torch.compiler.is_compiling() and _FAST_LAYERS.get()


def conv_route(x: torch.Tensor) -> str:
    """Which kernel family a convolution of ``x`` takes: ``"onednn"`` (called directly) or ``"torch"``
    (PyTorch's own dispatch).

    PyTorch sends a batch-1 fp32 CPU convolution with a kernel of at most 3 to oneDNN only when
    ``N * C * D * H > 20480`` (``use_mkldnn`` in ATen's ``Convolution.cpp``); the 20- and 40-channel
    convolutions at 32^3 and below fall to ``slow_conv3d`` / ``slow_conv_dilated3d`` (2.5-9x slower,
    ``bench/bench_network.py``). The fast layers call oneDNN for every fp32 CPU convolution. Under CPU
    autocast PyTorch already sends bf16 convolutions to oneDNN, under ``torch.compile`` inductor picks
    the kernels (the direct oneDNN call has no meta kernel to trace), and elsewhere (CUDA) PyTorch picks
    well."""
    if (_fast() and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu")):
        return "onednn"
    return "torch"


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last layout of its rank (oneDNN's fastest layout for these convolutions)."""
    return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)


class _FastConv:
    """Convolution whose fp32 CPU calls go to oneDNN whatever their size (:func:`conv_route`), output
    kept channels-last; the same parameters, names and maths as the PyTorch layer."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if conv_route(x) != "onednn" or self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        return _channels_last(torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation,
                                                       self.groups))


class Conv2d(_FastConv, nn.Conv2d):
    """:class:`nn.Conv2d` with the fast-layer dispatch."""


class Conv3d(_FastConv, nn.Conv3d):
    """:class:`nn.Conv3d` with the fast-layer dispatch."""


class _FastInstanceNorm:
    """Instance norm that, in the fast layers, keeps the channels-last layout: per-sample, per-channel
    mean, then the mean square of the centred values (two passes, as accurate as PyTorch's instance
    norm), eps, per-channel affine. PyTorch's instance norm copies a channels-last input to the
    contiguous layout, and its channels-last group and batch norms lose the variance of features whose
    mean is large against their spread (error 2.5 on unit-variance output, measured). CPU fp32 only:
    a bf16 input (autocast; PyTorch accumulates its statistics in fp32) and a GPU take PyTorch's
    instance norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not _fast() or x.device.type != "cpu" or x.dtype != torch.float32 or self.track_running_stats
                or not self.affine):
            return super().forward(x)
        space = tuple(range(2, x.dim()))
        centred = x - x.mean(space, keepdim=True)
        variance = centred.square().mean(space, keepdim=True)
        per_channel = (1, -1) + (1,) * len(space)
        scale = torch.rsqrt(variance.add_(self.eps)) * self.weight.view(per_channel)
        return torch.addcmul(self.bias.view(per_channel), centred, scale)


class InstanceNorm2d(_FastInstanceNorm, nn.InstanceNorm2d):
    """:class:`nn.InstanceNorm2d` with the fast-layer variant."""


class InstanceNorm3d(_FastInstanceNorm, nn.InstanceNorm3d):
    """:class:`nn.InstanceNorm3d` with the fast-layer variant."""


def sinusoidal_table(timesteps: int, dim: int = EMBED_DIM) -> torch.Tensor:
    """Published time table ``(T, dim)``: ``sin``/``cos`` of ``t / 10000^(2 k / dim)`` at even ``k = 2j``."""
    t = torch.arange(timesteps, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(0, dim, 2, dtype=torch.float64)
    angle = t / torch.pow(10000.0, 2.0 * k / dim)
    table = torch.zeros(timesteps, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table.float()


def _conv(ndims: int) -> type[nn.Module]:
    return Conv2d if ndims == 2 else Conv3d


def _conv_transpose(ndims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if ndims == 2 else nn.ConvTranspose3d


def _norm(ndims: int) -> type[nn.Module]:
    return InstanceNorm2d if ndims == 2 else InstanceNorm3d


class AtrousBlock(nn.Module):
    """Conv (+ InstanceNorm) then two dilated residual convs (dilations 1 and 3), LeakyReLU(1e-6)."""

    def __init__(self, ndims: int, cin: int, cout: int, norm: bool):
        super().__init__()
        conv = _conv(ndims)
        self.conv0 = conv(cin, cout, 3, padding=1)
        self.ln = _norm(ndims)(cout, affine=True) if norm else None
        self.convs = nn.ModuleList([conv(cout, cout, 3, padding=r, dilation=r) for r in (1, 3)])
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv0(x)
        if self.ln is not None:
            y = self.ln(y)
        if torch.is_inference_mode_enabled():
            return self._forward_inplace(y)
        z = y
        for conv in self.convs:
            z = conv(self.act(z))
        return self.act(z + y)

    def _forward_inplace(self, y: torch.Tensor) -> torch.Tensor:
        """Residual tail under ``torch.inference_mode`` only: the same operations in the same order,
        activations and the residual sum written in place on tensors nothing else holds (fewer
        full-size allocations). Training and ``no_grad`` (the reference path) keep the published ops."""
        first, second = self.convs
        z = second(F.leaky_relu_(first(self.act(y)), NEGATIVE_SLOPE))
        return F.leaky_relu_(z.add_(y), NEGATIVE_SLOPE)


def _stage(ndims: int, channels: tuple[int, ...], norm: bool) -> nn.Sequential:
    return nn.Sequential(*[AtrousBlock(ndims, a, b, norm) for a, b in zip(channels[:-1], channels[1:])])


def _embedding(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(EMBED_DIM, channels), nn.ReLU(), nn.Linear(channels, channels))


class RecResACNet(nn.Module):
    """Recurrent residual atrous U-Net with sinusoidal step embedding (published DRDM network).

    ``rec_num`` passes: pass 1 predicts ``d``; pass k > 1 runs on ``warp(image, d)`` and updates
    ``d <- compose(d, d_k)``. Each pass's output is clamped to ``±(N-1)/N``.
    """

    def __init__(self, ndims: int, timesteps: int = 80, in_channels: int = 1, rec_num: int = 2):
        super().__init__()
        if ndims not in (2, 3):
            raise ValueError(f"ndims must be 2 or 3, got {ndims}")
        self.ndims, self.timesteps, self.in_channels, self.rec_num = ndims, timesteps, in_channels, rec_num
        conv, up = _conv(ndims), _conv_transpose(ndims)
        self.time_embed = nn.Embedding(timesteps, EMBED_DIM)
        self.time_embed.weight.data.copy_(sinusoidal_table(timesteps))
        self.time_embed.weight.requires_grad_(False)
        self.te1 = _embedding(in_channels)
        self.b1 = _stage(ndims, (in_channels, 10, 10, 10), True)
        self.down1 = conv(10, 10, 4, 2, 1)
        self.te2 = _embedding(10)
        self.b2 = _stage(ndims, (10, 20, 20, 20), True)
        self.down2 = conv(20, 20, 4, 2, 1)
        self.te3 = _embedding(20)
        self.b3 = _stage(ndims, (20, 40, 40, 40), True)
        self.down3 = conv(40, 40, 4, 2, 1)
        self.te_mid = _embedding(40)
        self.b_mid = _stage(ndims, (40, 20, 20, 40), True)
        self.up1 = up(40, 40, 4, 2, 1)
        self.te4 = _embedding(80)
        self.b4 = _stage(ndims, (80, 40, 20, 20), False)
        self.up2 = up(20, 20, 4, 2, 1)
        self.te5 = _embedding(40)
        self.b5 = _stage(ndims, (40, 20, 10, 10), False)
        self.up3 = up(10, 10, 4, 2, 1)
        self.te_out = _embedding(20)
        self.b_out = _stage(ndims, (20, 10, 10, 10), False)
        self.conv_out = conv(10, ndims, 3, padding=1)

    def _broadcast(self, emb: torch.Tensor) -> torch.Tensor:
        return emb.view(*emb.shape, *([1] * self.ndims))

    def _input_block(self, x: torch.Tensor) -> torch.Tensor:
        """``b1``'s first block, always in fp32 (autocast off): recovery reads intensity differences
        that bf16 rounding of the image erases. All-bf16 recovery moved the 2D published sample's field
        by 17 vox on average; with this block in fp32, 2.2 vox, as much as fp32 batched vs one-at-a-time
        rounding (1.8 vox) (``bench/bench_precision.py``). Without autocast this is the plain block."""
        with torch.autocast(x.device.type, enabled=False):
            return self.b1[0](x.float())

    def unet(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One pass: ``(B, C, *spatial)`` -> unclamped normalised field ``(B, nd, *spatial)``."""
        e = self.time_embed(t)
        b = self._broadcast
        h1 = self.b1[1:](self._input_block(x + b(self.te1(e))))
        h2 = self.b2(self.down1(h1) + b(self.te2(e)))
        h3 = self.b3(self.down2(h2) + b(self.te3(e)))
        mid = self.b_mid(self.down3(h3) * b(self.te_mid(e)))
        y = self.b4(torch.cat([h3, self.up1(mid)], 1) + b(self.te4(e)))
        y = self.b5(torch.cat([h2, self.up2(y)], 1) + b(self.te5(e)))
        y = self.b_out(torch.cat([h1, self.up3(y)], 1) + b(self.te_out(e)))
        return self.conv_out(y)

    def forward(self, image: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        spatial = image.shape[2:]
        if len(spatial) != self.ndims or any(s % 8 for s in spatial):
            raise ValueError(f"RecResACNet({self.ndims}D) needs (B, C, *spatial) with sides divisible by 8, "
                             f"got {tuple(image.shape)}")
        sides = fields.voxel_sides(tuple(spatial), image.device, image.dtype)
        limit = (sides - 1) / sides
        d = torch.maximum(torch.minimum(self.unet(image, t), limit), -limit)
        for _ in range(1, self.rec_num):
            moved = fields.warp(image, d * sides, "bilinear", "zeros")
            dk = torch.maximum(torch.minimum(self.unet(moved, t), limit), -limit)
            d = dk + fields.warp(d, dk * sides, "bilinear", "border")
        return d


def parameter_count(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (the published 2D model has 443,435)."""
    return sum(p.numel() for p in model.parameters())

