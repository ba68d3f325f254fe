"""Published and default settings that the engine, its command line and the Slicer module share
(torch-free, so that Slicer's own process can read them)."""
from __future__ import annotations

TIMESTEPS = 80
"""Diffusion steps T of the published schedule (a model may declare its own)."""
DEFAULT_DEPTH = 32
"""Diffusion depth T0 of a run when none is given."""
DEFAULT_SAMPLES = 3
"""Samples per case of ``drdm augment`` when none is given."""


def max_depth(timesteps: int = TIMESTEPS) -> int:
    """Largest diffusion depth T0 of a schedule of ``timesteps`` steps (``T - 1``)."""
    return timesteps - 1
PRECISIONS = ("auto", "fp32", "bf16")
"""Choices of the recovery network's precision (``--precision``)."""
FIELD_COMPRESSION_DEFAULT = 0
"""gzip level of written displacement fields: 0, raw (measured: level 1 saves 7 % for about 5x the write time)."""
