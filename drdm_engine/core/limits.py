"""Range checks shared by checkpoint metadata, training settings and the command line.

Each check raises one :class:`DRDMError` line naming the setting, the allowed range and the value.
"""
from __future__ import annotations

import math

from .errors import DRDMError

MAX_SIDE = 4096
"""Largest working grid side (voxels) a model or run may declare."""
SEED_LIMIT = 2 ** 64
"""Seeds are integers ``0 … SEED_LIMIT - 1`` (what a torch generator accepts)."""
SIZE_RANGE = (8, 1024)
"""Working grid sides (voxels) a diffusion-only run may ask for with ``--size``."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def require_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an integer in ``low … high`` (``high=None``: no upper bound); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise DRDMError(f"{name} must be an integer {bound}, got {_shown(value)}")
    return value


def require_side(name: str, value: object) -> int:
    """A working grid side: a multiple of 8 from 8 to :data:`MAX_SIDE`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= MAX_SIDE or value % 8:
        raise DRDMError(f"{name} must be a multiple of 8 from 8 to {MAX_SIDE}, got {_shown(value)}")
    return value


def require_number(name: str, value: object, positive: bool = True) -> float:
    """A finite number, ``> 0`` (``positive``) or ``>= 0``; bools and NaN/inf are refused."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > 0 if positive else value >= 0))
    if not ok:
        kind = "positive" if positive else "non-negative"
        raise DRDMError(f"{name} must be a finite {kind} number, got {_shown(value)}")
    return float(value)


def require_seed(name: str, value: object) -> int:
    """A seed in ``0 … 2**64 - 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise DRDMError(f"{name} must be an integer from 0 to 2**64 - 1, got {_shown(value)}")
    return value


def sub_seed(value: int) -> int:
    """A seed derived by arithmetic on seeds, wrapped into ``0 … 2**64 - 1`` (unchanged when already inside)."""
    return value % SEED_LIMIT


def check_sampling(samples: int, seed: int, size: int | None) -> None:
    """Refuse settings no sampling run can use: fewer than 1 sample, a seed outside ``0 … 2**64 - 1``, a
    working size outside :data:`SIZE_RANGE`."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise DRDMError(f"--samples must be at least 1, got {_shown(samples)}")
    require_seed("--seed", seed)
    if size is not None and not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise DRDMError(f"--size must be in {SIZE_RANGE[0]}…{SIZE_RANGE[1]} (working grid side in voxels), "
                        f"got {size}")
