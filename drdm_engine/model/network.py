"""RecResACNet, the published DRDM recovery network (spec section 3).

Input ``(B, C, *spatial)`` with every side divisible by 8, step ``t`` ``(B,)``; output the recovery
field ``(B, nd, *spatial)`` in the published *normalised* units (voxels = side x value, channel
``c`` along tensor axis ``c``). Parameter names match the published checkpoints.

The layers, and the element-wise steps between them, come from :data:`.layer_choice.LAYERS`: PyTorch's
own (:mod:`.layers`, the published ops) or, where ``model/cpu/`` is present, the same maths run faster
on the CPU.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import fields
from ..core.defaults import TIMESTEPS
from .layer_choice import LAYERS

EMBED_DIM = 100
NEGATIVE_SLOPE = 1e-6


def sinusoidal_table(timesteps: int, dim: int = EMBED_DIM) -> torch.Tensor:
    """Published time table ``(T, dim)``: ``sin``/``cos`` of ``t / 10000^(2 k / dim)`` at even ``k = 2j``."""
    t = torch.arange(timesteps, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(0, dim, 2, dtype=torch.float64)
    angle = t / torch.pow(10000.0, 2.0 * k / dim)
    table = torch.zeros(timesteps, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table.float()


class AtrousBlock(nn.Module):
    """Conv (+ InstanceNorm) then two dilated residual convs (dilations 1 and 3), LeakyReLU(1e-6)."""

    def __init__(self, ndims: int, cin: int, cout: int, norm: bool):
        super().__init__()
        conv = LAYERS.conv(ndims)
        self.conv0 = conv(cin, cout, 3, padding=1)
        self.ln = LAYERS.norm(ndims)(cout, affine=True) if norm else None
        self.convs = nn.ModuleList([conv(cout, cout, 3, padding=r, dilation=r) for r in (1, 3)])
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = norm(conv0(x))``, then ``act(convs[1](act(convs[0](act(y)))) + y)``."""
        y = self.conv0(x)
        if self.ln is not None:
            y = LAYERS.normalise(self.ln, y)
        first, second = self.convs
        z = LAYERS.conv_act(first, self.act(y), self.act)
        return LAYERS.residual(second, z, y, self.act)


def _stage(ndims: int, channels: tuple[int, ...], norm: bool) -> nn.Sequential:
    return nn.Sequential(*[AtrousBlock(ndims, a, b, norm) for a, b in zip(channels[:-1], channels[1:])])


def _embedding(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(EMBED_DIM, channels), nn.ReLU(), nn.Linear(channels, channels))


class RecResACNet(nn.Module):
    """Recurrent residual atrous U-Net with sinusoidal step embedding (published DRDM network).

    ``rec_num`` passes: pass 1 predicts ``d``; pass k > 1 runs on ``warp(image, d)`` and updates
    ``d <- compose(d, d_k)``. Each pass's output is clamped to ``±(N-1)/N``.
    """

    def __init__(self, ndims: int, timesteps: int = TIMESTEPS, in_channels: int = 1, rec_num: int = 2):
        super().__init__()
        if ndims not in (2, 3):
            raise ValueError(f"ndims must be 2 or 3, got {ndims}")
        self.ndims, self.timesteps, self.in_channels, self.rec_num = ndims, timesteps, in_channels, rec_num
        conv, up = LAYERS.conv(ndims), LAYERS.conv_transpose(ndims)
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
        h2 = self.b2(LAYERS.add(self.down1(h1), b(self.te2(e))))
        h3 = self.b3(LAYERS.add(self.down2(h2), b(self.te3(e))))
        mid = self.b_mid(LAYERS.multiply(self.down3(h3), b(self.te_mid(e))))
        y = self.b4(LAYERS.concat_add(h3, self.up1(mid), b(self.te4(e))))
        y = self.b5(LAYERS.concat_add(h2, self.up2(y), b(self.te5(e))))
        y = self.b_out(LAYERS.concat_add(h1, self.up3(y), b(self.te_out(e))))
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

