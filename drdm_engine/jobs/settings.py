"""The settings of one ``drdm augment`` run, checked once before any work."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.defaults import DEFAULT_DEPTH, DEFAULT_SAMPLES, FIELD_COMPRESSION_DEFAULT
from ..core.errors import DRDMError
from ..core.limits import check_sampling

RUN_ONLY = ("device", "workers", "force_large")  # settings that do not decide a run's outputs


@dataclass(frozen=True)
class Job:
    """What a run makes (``samples`` per case at diffusion ``depth`` from ``seed``, with ``model``,
    ``recovery``, working ``size``, network ``precision``, registration ``pairs``, ``copy_originals``,
    the fields' gzip level) and how it runs (``device``, ``workers``, ``force_large``)."""

    samples: int = DEFAULT_SAMPLES
    depth: int = DEFAULT_DEPTH
    seed: int = 0
    model: str | None = None
    recovery: str = "published"
    size: int | None = None
    precision: str = "auto"
    pairs: bool = False
    copy_originals: bool = False
    field_compression: int = FIELD_COMPRESSION_DEFAULT
    device: str = "auto"
    workers: int = 1
    force_large: bool = False

    def check(self) -> "Job":
        """Refuse settings no run can use (the depth is checked against the model's schedule later)."""
        check_sampling(self.samples, self.seed, self.size)
        if self.workers < 1:
            raise DRDMError(f"--workers must be at least 1, got {self.workers}")
        return self

    def signature(self) -> dict:
        """The settings that decide the outputs: what a resumed run must share with the interrupted one."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_ONLY}

    @property
    def originals(self) -> bool:
        """Whether each case's own files are copied into the output (asked for, or needed by pairs)."""
        return self.copy_originals or self.pairs
