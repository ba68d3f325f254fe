"""Published training augmentations, written with torch only.

Inputs are batches ``(B, C, *spatial)`` of intensities in [0, 1] on any device; every random draw
takes the given ``torch.Generator`` (on its own device) and each sample gets its own draw. The parameters
decide shapes and which samples change, so with a GPU generator the host reads them (a wait for the GPU
per read); with a CPU generator they are drawn on the host and only the voxel work runs on the batch's
device, without any wait: the training loop does that.

- 3D: with p = 0.6 a random resample (resolution loss: down to a random 50-100 % of the grid per
  axis and back, trilinear), with p = 0.8 a random resized crop (volume fraction 0.6-1, aspect
  ratios 3/4-4/3 per axis pair, resized back to the grid).
- 2D: random affine with p = 0.8 (rotation within ±180°, translation within ±12.5 % of the side),
  vertical flip (p = 0.5), autocontrast (p = 0.5).
- Both: intensity ``clamp(x - a, 0, 1 - b - a)`` with ``a, b ~ U(0, 0.2)``, then
  ``x * N(1, 0.1) + N(0, 0.1)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` float64 draws of ``U(low, high)`` on the generator's device."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)


def _chosen(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` booleans on the generator's device, each true with probability ``p``."""
    return torch.rand(n, generator=generator, device=generator.device) < p


def _like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values`` on ``x``'s device in ``x``'s dtype (booleans stay booleans); a copy from the host is
    queued without waiting for the device."""
    dtype = values.dtype if values.dtype == torch.bool else x.dtype
    return values.to(device=x.device, dtype=dtype, non_blocking=True)


def _per_sample(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` boolean mask shaped to broadcast over ``x`` ``(B, C, *spatial)``, on its device."""
    return _like(mask.view(-1, *([1] * (x.dim() - 1))), x)


def _linear_mode(nd: int) -> str:
    return "bilinear" if nd == 2 else "trilinear"


def _resample_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``(B, C, *spatial)`` with ``affine_grid`` matrices ``theta`` ``(B, nd, nd + 1)`` (normalised
    ``xyz`` coordinates, output -> input), linear, zero padding."""
    grid = F.affine_grid(_like(theta, x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_resample(x: torch.Tensor, generator: torch.Generator, p: float = 0.6,
                    low: float = 0.5) -> torch.Tensor:
    """With probability ``p`` per sample, resample to ``U(low, 1)`` of the grid per axis and back."""
    out = x.clone()
    spatial = x.shape[2:]
    for i in torch.nonzero(_chosen(x.shape[0], p, generator)).flatten().tolist():
        factors = _uniform(len(spatial), low, 1.0, generator)
        coarse = [max(2, round(n * f)) for n, f in zip(spatial, factors.tolist())]
        mode = _linear_mode(len(spatial))
        small = F.interpolate(x[i:i + 1], size=coarse, mode=mode, align_corners=False)
        out[i:i + 1] = F.interpolate(small, size=spatial, mode=mode, align_corners=False)
    return out


def crop_fractions(nd: int, scale: float, generator: torch.Generator,
                   ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Side fractions ``(nd,)`` of a box holding ``scale`` of the volume with log-uniform aspect ratios
    in ``ratio``; each fraction at most 1 (the box fits in the image)."""
    log_ratio = _uniform(nd, math.log(ratio[0]), math.log(ratio[1]), generator)
    log_ratio = log_ratio - log_ratio.mean()
    return torch.exp(math.log(scale) / nd + log_ratio).clamp(max=1.0)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, p: float = 0.8,
                        scale: tuple[float, float] = (0.6, 1.0)) -> torch.Tensor:
    """With probability ``p`` per sample, crop a random box of ``U(scale)`` of the volume and resize it
    back to the full grid."""
    b, nd = x.shape[0], x.dim() - 2
    theta = torch.zeros(b, nd, nd + 1, dtype=torch.float64, device=generator.device)
    theta[:, :, :nd] = torch.eye(nd, dtype=torch.float64, device=generator.device)
    chosen = _chosen(b, p, generator)
    for i in torch.nonzero(chosen).flatten().tolist():
        fractions = crop_fractions(nd, float(_uniform(1, *scale, generator)), generator)
        centres = (1 - fractions) * _uniform(nd, -1.0, 1.0, generator)
        theta[i, :, :nd] = torch.diag(fractions)
        theta[i, :, nd] = centres
    return torch.where(_per_sample(chosen, x), _resample_affine(x, theta), x)


def random_affine_2d(x: torch.Tensor, generator: torch.Generator, p: float = 0.8, degrees: float = 180.0,
                     translate: float = 0.125) -> torch.Tensor:
    """With probability ``p`` per sample, rotate by ``U(±degrees)`` about the centre and translate by
    ``U(±translate)`` of the side along each axis (2D only)."""
    b = x.shape[0]
    angle = torch.deg2rad(_uniform(b, -degrees, degrees, generator))
    shift = _uniform(2 * b, -2 * translate, 2 * translate, generator).view(b, 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return torch.where(_per_sample(_chosen(b, p, generator), x), _resample_affine(x, theta), x)


def random_vertical_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """With probability ``p`` per sample, flip along the first spatial axis (image rows)."""
    return torch.where(_per_sample(_chosen(x.shape[0], p, generator), x), x.flip(2), x)


def random_autocontrast(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """With probability ``p`` per sample, stretch intensities linearly to the full [0, 1] range."""
    flat = x.flatten(1)
    low = flat.min(1).values.view(-1, *([1] * (x.dim() - 1)))
    high = flat.max(1).values.view(-1, *([1] * (x.dim() - 1)))
    stretched = torch.where(high > low, (x - low) / (high - low).clamp_min(1e-12), x)
    return torch.where(_per_sample(_chosen(x.shape[0], p, generator), x), stretched, x)


def random_intensity(x: torch.Tensor, generator: torch.Generator, cut: float = 0.2,
                     gain_sd: float = 0.1, offset_sd: float = 0.1) -> torch.Tensor:
    """``clamp(x - a, 0, 1 - b - a)`` with ``a, b ~ U(0, cut)``, then ``x * N(1, gain_sd) + N(0, offset_sd)``
    (published; the result is not renormalised)."""
    b, shape = x.shape[0], (-1, *([1] * (x.dim() - 1)))
    a = _uniform(b, 0.0, cut, generator)
    top = 1 - _uniform(b, 0.0, cut, generator) - a
    gain = 1 + gain_sd * torch.randn(b, generator=generator, dtype=torch.float64, device=generator.device)
    offset = offset_sd * torch.randn(b, generator=generator, dtype=torch.float64, device=generator.device)
    a, top, gain, offset = (_like(v, x).view(shape) for v in (a, top, gain, offset))
    clipped = torch.minimum((x - a).clamp_min(0), top)
    return clipped * gain + offset


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The published training augmentation of a batch ``(B, C, *spatial)`` (2D or 3D)."""
    if x.dim() == 5:
        x = random_resized_crop(random_resample(x, generator), generator)
    else:
        x = random_autocontrast(random_vertical_flip(random_affine_2d(x, generator), generator), generator)
    return random_intensity(x, generator)
