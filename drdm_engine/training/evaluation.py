"""Recovery error: how well a model undoes one diffusion step's clean field, per band of ``t``.

For held-out volume ``v``, step ``t`` and draw ``k``, the fields are drawn and integrated on the CPU
from a generator seeded with ``(seed, v, t, k)`` (wrapped into 64 bits) and then moved to the network's
device, so two models are scored on the same deformations, on a GPU as on the CPU. The
error is the MRSE of ``q = warp(p, F_clean)`` against ``F_clean`` (0: perfect recovery; 1: predicting
no motion);
:func:`recovery_metrics` adds the cosine of ``q`` and ``F_clean`` (-1: exact direction) and the
ratio ``|q| / |F_clean|`` (RMS lengths; 1: the right size), since MRSE is heavy-tailed where the
target is near zero. ``t = 0`` is left out: its target is the zero field, where MRSE is undefined.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import fields
from ..core.diffusion import DiffusionSchedule, diffuse, forward_fields
from ..core.limits import sub_seed
from ..model.network import RecResACNet
from .losses import compose_with_target, cosine_map, cosine_per_sample, magnitude_ratio_per_sample, mrse_per_sample

SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Bucket:
    """Steps ``first … last`` (inclusive) reported together."""

    first: int
    last: int

    @property
    def label(self) -> str:
        return f"t{self.first:02d}-{self.last:02d}"


def buckets_for(timesteps: int, count: int) -> list[Bucket]:
    """``count`` contiguous buckets covering ``1 … timesteps-1``."""
    edges = torch.linspace(1, timesteps, count + 1).round().long().tolist()
    return [Bucket(a, b - 1) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def bucket_steps(bucket: Bucket, samples: int) -> list[int]:
    """``samples`` steps spread evenly over a bucket (centres of equal sub-intervals)."""
    width = bucket.last - bucket.first + 1
    return [bucket.first + int((k + 0.5) * width / samples) for k in range(samples)]


def _generator(seed: int, volume: int, t: int, draw: int) -> torch.Generator:
    """The CPU generator of one validation deformation."""
    return torch.Generator().manual_seed(sub_seed(((seed * SEED_STRIDE + volume) * SEED_STRIDE + t) * 97 + draw))


def validation_fields(seed: int, volume: int, t: int, draw: int, ndims: int, size: int, schedule: DiffusionSchedule,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F_full, F_clean)`` of validation draw ``(seed, volume, t, draw)``, each ``(1, nd, size^nd)`` voxels:
    computed on the CPU (the same numbers whatever the device scoring them), then moved to ``device``."""
    full, clean = forward_fields(torch.full((1,), t, dtype=torch.long), ndims, size, schedule,
                                 _generator(seed, volume, t, draw))
    return full.to(device), clean.to(device)


METRICS = ("mrse", "cosine", "ratio")


@torch.no_grad()
def recovery_metrics(net: RecResACNet, volumes: torch.Tensor, schedule: DiffusionSchedule, buckets: list[Bucket],
                     samples: int = 2, seed: int = 0, foreground: float | None = None) -> dict[str, dict[str, float]]:
    """Per bucket label, the mean ``mrse``, ``cosine`` and ``ratio`` (``|q| / |F_clean|``) for
    ``volumes`` ``(V, C, N^nd)`` on the network's device. Each bucket averages ``samples`` steps per
    volume, one deformation each. With ``foreground`` (an intensity of the normalised volumes), also
    ``cosine_foreground``: the cosine over the voxels of the undeformed volume above it only (where
    the image shows what moved; background voxels carry no evidence of the deformation)."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    nd, size = volumes.dim() - 2, volumes.shape[2]
    report = {}
    for bucket in buckets:
        scores = {name: [] for name in METRICS}
        for v in range(volumes.shape[0]):
            image = volumes[v:v + 1].to(device)
            for k, step in enumerate(bucket_steps(bucket, samples)):
                full, clean = validation_fields(seed, v, step, k, nd, size, schedule, device)
                p = net(diffuse(image, full), torch.full((1,), step, dtype=torch.long, device=device)).float()
                q, c = compose_with_target(p, clean), clean / fields.voxel_sides(p.shape[2:], device, p.dtype)
                scores["mrse"].append(mrse_per_sample(q, c))
                scores["cosine"].append(cosine_per_sample(q, c))
                scores["ratio"].append(magnitude_ratio_per_sample(q, c))
                if foreground is not None:
                    scores.setdefault("cosine_foreground", []).append(
                        cosine_map(q, c)[image[:, 0] > foreground].mean().view(1))
        report[bucket.label] = {name: float(torch.cat(values).mean()) for name, values in scores.items()}
    net.train(was_training)
    return report


def recovery_error(net: RecResACNet, volumes: torch.Tensor, schedule: DiffusionSchedule, buckets: list[Bucket],
                   samples: int = 2, seed: int = 0) -> dict[str, float]:
    """Mean recovery error (MRSE) per bucket label; see :func:`recovery_metrics`."""
    return {label: m["mrse"] for label, m in recovery_metrics(net, volumes, schedule, buckets, samples, seed).items()}
