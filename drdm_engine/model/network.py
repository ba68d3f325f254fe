"""RecResACNet, the published DRDM recovery network (spec section 3).

Input ``(B, C, *spatial)`` with every side divisible by 8, step ``t`` ``(B,)``; output the recovery
field ``(B, nd, *spatial)`` in the published *normalised* units (voxels = side x value, channel
``c`` along tensor axis ``c``). Parameter names match the published checkpoints.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import platform
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..core import fields

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


_X86 = platform.machine().lower() in ("x86_64", "amd64")


def _inference_kernels(x: torch.Tensor) -> bool:
    """Whether a oneDNN convolution of ``x`` may take oneDNN's inference kernels with fused post-ops
    and prepacked weights (``torch.ops.mkldnn._convolution_pointwise``, as inductor's CPU freezing
    uses): no gradient is recorded (they have no backward) and the CPU is x86 (oneDNN's ARM builds
    go through the Arm Compute Library instead)."""
    return not torch.is_grad_enabled() and _X86 and conv_route(x) == "onednn"


def _in_place() -> bool:
    """Whether the fast layers may write sums into fresh layer outputs: no gradient is recorded."""
    return _fast() and not torch.is_grad_enabled()


_FROZEN: contextvars.ContextVar[dict[tuple, torch.Tensor] | None] = contextvars.ContextVar("drdm_frozen_weights",
                                                                                          default=None)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The channels-last memory format of ``x``'s rank (oneDNN's fastest layout for these convolutions)."""
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last layout of its rank."""
    return x.contiguous(memory_format=_layout(x))


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


def _packed_weight(layer: nn.Module, x: torch.Tensor, reorder: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
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


class _FastConv:
    """Convolution whose fp32 CPU calls go to oneDNN whatever their size (:func:`conv_route`), output
    kept channels-last; the same parameters, names and maths as the PyTorch layer. Without gradients on
    x86, oneDNN's inference kernels (:func:`_inference_kernels`; weights reordered once per
    :func:`frozen_weights` block), and two fused forms the residual blocks use: :meth:`leaky`
    (convolution, then LeakyReLU) and :meth:`add_into` (``other += convolution``)."""

    def _onednn_args(self) -> tuple[list[int], list[int], list[int], int]:
        """Padding, stride, dilation and groups as oneDNN's operators take them."""
        return list(self.padding), list(self.stride), list(self.dilation), self.groups

    def _keeps_shape(self, other: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether this convolution of ``x`` has ``other``'s shape (stride 1, size-preserving padding)."""
        same_size = all(s == 1 and 2 * p == d * (k - 1) for s, p, d, k in
                        zip(self.stride, self.padding, self.dilation, self.kernel_size))
        return same_size and other.shape == (x.shape[0], self.out_channels, *x.shape[2:])

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_weight(self, x, lambda w: torch.ops.mkldnn._reorder_convolution_weight(
            w, *self._onednn_args(), list(x.shape)))

    def _takes_inference_kernels(self, x: torch.Tensor) -> bool:
        """:func:`_inference_kernels` for this layer (zero padding, the oneDNN operators' only mode)."""
        return self.padding_mode == "zeros" and _inference_kernels(x)

    def _pointwise(self, x: torch.Tensor, bias: torch.Tensor | None, attr: str, scalars: list[float]) -> torch.Tensor:
        """oneDNN's inference convolution of ``x`` with the post-op ``attr``, output channels-last."""
        return _channels_last(torch.ops.mkldnn._convolution_pointwise(
            x, self._weight_for(x), bias, *self._onednn_args(), attr, scalars, None))

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if conv_route(x) != "onednn" or self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        if weight is self.weight and _inference_kernels(x):
            return self._pointwise(x, bias, "none", [])
        return _channels_last(torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation,
                                                       self.groups))

    def leaky(self, x: torch.Tensor, slope: float) -> torch.Tensor:
        """``leaky_relu(self(x), slope)``, the activation applied by oneDNN as the convolution writes."""
        if not self._takes_inference_kernels(x):
            return F.leaky_relu_(self(x), slope)
        return self._pointwise(x, self.bias, "leaky_relu", [slope])

    def add_into(self, other: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``other += self(x)`` in place (oneDNN accumulates into ``other``, channels-last), ``other``
        returned; ``other`` must be a tensor nothing else reads."""
        if (not self._takes_inference_kernels(x) or not self._keeps_shape(other, x)
                or not other.is_contiguous(memory_format=_layout(other))):
            return other.add_(self(x))
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            other, x, self._weight_for(x), self.bias, *self._onednn_args(), "add", None, None, [], None)


class _FastConvTranspose:
    """Transposed convolution that, without gradients on an x86 CPU in fp32, runs oneDNN's inference
    kernel (weights reordered once per :func:`frozen_weights` block), output channels-last; the same
    parameters, names and maths as the PyTorch layer."""

    def _onednn_args(self) -> tuple[list[int], list[int], list[int], list[int], int]:
        """Padding, output padding, stride, dilation and groups as oneDNN's operators take them."""
        return (list(self.padding), list(self.output_padding), list(self.stride), list(self.dilation),
                self.groups)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or self.padding_mode != "zeros" or not _inference_kernels(x):
            return super().forward(x, output_size)
        weight = _packed_weight(self, x, lambda w: torch.ops.mkldnn._reorder_convolution_transpose_weight(
            w, *self._onednn_args(), list(x.shape)))
        return _channels_last(torch.ops.mkldnn._convolution_transpose_pointwise(
            x, weight, self.bias, *self._onednn_args(), "none", [], None))


class Conv2d(_FastConv, nn.Conv2d):
    """:class:`nn.Conv2d` with the fast-layer dispatch."""


class Conv3d(_FastConv, nn.Conv3d):
    """:class:`nn.Conv3d` with the fast-layer dispatch."""


class ConvTranspose2d(_FastConvTranspose, nn.ConvTranspose2d):
    """:class:`nn.ConvTranspose2d` with the fast-layer dispatch."""


class ConvTranspose3d(_FastConvTranspose, nn.ConvTranspose3d):
    """:class:`nn.ConvTranspose3d` with the fast-layer dispatch."""


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
        return (_fast() and x.device.type == "cpu" and x.dtype == torch.float32 and not self.track_running_stats
                and self.affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._runs_fast(x):
            return super().forward(x)
        return self._normalise(_channels_last(x), in_place=False)

    def normalise_(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` written into ``x`` (a channels-last tensor nothing else reads; the same
        arithmetic), or ``forward(x)`` where the fast variant does not run."""
        if not self._runs_fast(x) or not x.is_contiguous(memory_format=_layout(x)):
            return self(x)
        return self._normalise(x, in_place=True)

    def _normalise(self, x: torch.Tensor, in_place: bool) -> torch.Tensor:
        """Mean, then the mean square about it (two passes: accurate however far the mean lies from
        zero), then ``x * scale + (bias - mean * scale)`` in one pass (into ``x`` when ``in_place``), as
        PyTorch's instance norm applies it; every pass over :func:`_voxel_rows`."""
        rows, k = _voxel_rows(x)
        mean = _row_channel_means(rows, k)
        variance = _row_channel_means(torch.sub(rows, _tiled(mean, k)).square_(), k)
        scale = torch.rsqrt(variance.add_(self.eps)) * self.weight
        shift = torch.addcmul(self.bias, mean, scale, value=-1)
        result = torch.addcmul(_tiled(shift, k), rows, _tiled(scale, k), out=rows if in_place else None)
        return x if in_place else _from_voxel_rows(result, x)


def _voxel_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A channels-last ``x`` ``(B, C, *spatial)`` viewed as rows of ``k`` voxels' channels
    ``(B, voxels / k, k * C)`` (``k`` up to 16, dividing the voxel count), and ``k``.

    PyTorch runs a channels-last tensor's spatial reductions and per-channel broadcasts with the 10-40
    channels as the innermost loop, at a third of the memory's speed; rows of ``k * C`` values vectorise."""
    batch, channels, voxels = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    k = math.gcd(voxels, 16)
    return x.permute(0, *range(2, x.dim()), 1).reshape(batch, voxels // k, k * channels), k


def _from_voxel_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_voxel_rows`: ``rows`` as a channels-last tensor shaped like ``like``."""
    spatial = like.shape[2:]
    return rows.view(like.shape[0], *spatial, like.shape[1]).permute(0, like.dim() - 1, *range(1, like.dim() - 1))


def _row_channel_means(rows: torch.Tensor, k: int) -> torch.Tensor:
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
    return ConvTranspose2d if ndims == 2 else ConvTranspose3d


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
        if _in_place():
            return self._forward_inplace(y if self.ln is None else self.ln.normalise_(y))
        if self.ln is not None:
            y = self.ln(y)
        z = y
        for conv in self.convs:
            z = conv(self.act(z))
        return self.act(z + y)

    def _forward_inplace(self, y: torch.Tensor) -> torch.Tensor:
        """Residual tail where :func:`_in_place` (fast layers, no gradient): the same operations in the
        same order, the first activation applied as its convolution writes, the residual sum accumulated
        into ``y`` by the second convolution and the last activation in place (no full-size allocation
        but the two convolution inputs). Training and the reference path keep the published ops."""
        first, second = self.convs
        z = first.leaky(self.act(y), NEGATIVE_SLOPE)
        return F.leaky_relu_(second.add_into(y, z), NEGATIVE_SLOPE)


def _stage(ndims: int, channels: tuple[int, ...], norm: bool) -> nn.Sequential:
    return nn.Sequential(*[AtrousBlock(ndims, a, b, norm) for a, b in zip(channels[:-1], channels[1:])])


def _embedding(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(EMBED_DIM, channels), nn.ReLU(), nn.Linear(channels, channels))


def _plus(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """``x + emb``; written into ``x`` (a fresh layer output) where :func:`_in_place`."""
    return x.add_(emb) if _in_place() else x + emb


def _times(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """``x * emb``; written into ``x`` (a fresh layer output) where :func:`_in_place`."""
    return x.mul_(emb) if _in_place() else x * emb


def _join_plus(skip: torch.Tensor, up: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """``torch.cat([skip, up], 1) + emb`` (``emb`` ``(B or 1, C, 1, ...)``). On the CPU where
    :func:`_in_place`, each part's sum is written straight into its channels of one channels-last
    tensor (one full-size pass instead of two; the same sums)."""
    if not _in_place() or skip.device.type != "cpu":
        return torch.cat([skip, up], 1) + emb
    split = skip.shape[1]
    dtype = torch.promote_types(torch.promote_types(skip.dtype, up.dtype), emb.dtype)
    out = torch.empty((skip.shape[0], split + up.shape[1], *skip.shape[2:]), dtype=dtype,
                      memory_format=_layout(skip))
    torch.add(skip, emb[:, :split], out=out[:, :split])
    torch.add(up, emb[:, split:], out=out[:, split:])
    return out


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
        """One pass: ``(B, C, *spatial)`` and steps ``t`` ``(B,)`` (or one step for all, 0-d) -> unclamped
        normalised field ``(B, nd, *spatial)``."""
        e = self.time_embed(t.reshape(-1))
        b = self._broadcast
        h1 = self.b1[1:](self._input_block(x + b(self.te1(e))))
        h2 = self.b2(_plus(self.down1(h1), b(self.te2(e))))
        h3 = self.b3(_plus(self.down2(h2), b(self.te3(e))))
        mid = self.b_mid(_times(self.down3(h3), b(self.te_mid(e))))
        y = self.b4(_join_plus(h3, self.up1(mid), b(self.te4(e))))
        y = self.b5(_join_plus(h2, self.up2(y), b(self.te5(e))))
        y = self.b_out(_join_plus(h1, self.up3(y), b(self.te_out(e))))
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

