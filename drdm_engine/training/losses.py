"""DRDM training loss (spec section 4): ``MRSE + cosine + reg_weight * Reg``.

The network predicts ``p`` in published normalised units (voxels / N); the target ``c = F_clean``
arrives in voxels. MRSE and cosine compare ``q = warp(p, F_clean)`` with ``c`` in normalised units
(as published); the folding penalty uses the true Jacobian determinant of ``x + N p(x)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import fields

EPS = 1e-7
GRADIENT_THRESHOLD = 1e-4
COSINE_SCALE = 1e5
COSINE_EPS = 1e-4
TERM_NAMES = ("total", "mrse", "cosine", "gradient", "folding")


def mrse_per_sample(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of ``|q + c|^2 / (|c|^2 + 1e-7)``, ``(B,)``; ``q``, ``c`` are ``(B, nd, *spatial)``
    in the same units. 0 when ``q = -c``; 1 (for large ``c``) when ``q = 0``."""
    ratio = (q + c).square().sum(1) / (c.square().sum(1) + EPS)
    return ratio.flatten(1).mean(1)


def cosine_map(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per-voxel cosine between ``q`` and ``c`` ``(B, nd, *spatial)``, ``(B, *spatial)``; -1 where ``q``
    opposes ``c``. As published, both fields are scaled by 1e5 before ``eps = 1e-4`` enters:
    ``q'·c' / sqrt(|q'|^2 |c'|^2 + 1e-4)``, a true cosine for normalised fields (|c| ~ 1e-3), not ~0."""
    qs, cs = q * COSINE_SCALE, c * COSINE_SCALE
    return (qs * cs).sum(1) / torch.sqrt(qs.square().sum(1) * cs.square().sum(1) + COSINE_EPS)


def cosine_per_sample(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of :func:`cosine_map`, ``(B,)``."""
    return cosine_map(q, c).flatten(1).mean(1)


def cosine(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean over voxels and batch of :func:`cosine_per_sample`."""
    return cosine_per_sample(q, c).mean()


def magnitude_ratio_per_sample(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """RMS length of ``q`` over RMS length of ``c``, ``(B,)``: 1 when the prediction has the target's
    size, 0 for "no motion", > 1 for overshoot (MRSE alone hides which)."""
    return _rms(q) / _rms(c).clamp_min(1e-12)


def _rms(field: torch.Tensor) -> torch.Tensor:
    """Root mean square over voxels of the vector length, ``(B,)``."""
    return field.square().sum(1).flatten(1).mean(1).sqrt()


def gradient_penalty(p: torch.Tensor, threshold: float = GRADIENT_THRESHOLD) -> torch.Tensor:
    """Mean over spatial axes of ``mean(relu(|forward difference of p| - threshold))`` (published units)."""
    nd = p.dim() - 2
    terms = [torch.relu(torch.diff(p, dim=2 + a).abs() - threshold).mean() for a in range(nd)]
    return torch.stack(terms).mean()


def folding_penalty(u: torch.Tensor) -> torch.Tensor:
    """``mean(relu(-det J))`` of ``x -> x + u(x)``, ``u`` ``(B, nd, *spatial)`` in voxels; 0 without folding."""
    return torch.relu(-fields.jacobian_determinant(u)).mean()


@dataclass
class LossTerms:
    """Scalar loss terms of one batch; ``total`` carries the gradient."""

    total: torch.Tensor
    mrse: torch.Tensor
    cosine: torch.Tensor
    gradient: torch.Tensor
    folding: torch.Tensor

    def stacked(self) -> torch.Tensor:
        """The terms in :data:`TERM_NAMES` order as one ``(5,)`` tensor on their device (no host read)."""
        return torch.stack([getattr(self, name).detach() for name in TERM_NAMES])

    def as_floats(self) -> dict[str, float]:
        """The terms as numbers (one host read)."""
        return dict(zip(TERM_NAMES, self.stacked().tolist()))


def compose_with_target(p: torch.Tensor, clean: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """``q = warp(p, F_clean)``: the normalised prediction ``p`` sampled where ``F_clean`` (voxels) points."""
    return fields.warp(p, clean, "bilinear", padding)


def recovery_loss(p: torch.Tensor, clean: torch.Tensor, reg_weight: float = 10.0, fold_weight: float = 2.0,
                  padding: str = "border") -> LossTerms:
    """``MRSE + cosine + reg_weight * (gradient + fold_weight * folding)``.

    ``p``: prediction ``(B, nd, *spatial)`` normalised (voxels / N); ``clean``: ``F_clean`` in voxels.
    """
    sides = fields.voxel_sides(p.shape[2:], p.device, p.dtype)
    c = clean / sides
    q = compose_with_target(p, clean, padding)
    mrse = mrse_per_sample(q, c).mean()
    cos = cosine(q, c)
    grad = gradient_penalty(p)
    fold = folding_penalty(p * sides)
    total = mrse + cos + reg_weight * (grad + fold_weight * fold)
    return LossTerms(total, mrse, cos, grad, fold)
