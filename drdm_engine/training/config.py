"""Training configuration: one dataclass, read from YAML and overridden by command-line flags.

Every field is a YAML key and a flag (``size`` -> ``--size``, ``checkpoint_every`` ->
``--checkpoint-every``). Unknown YAML keys and ill-typed values raise one :class:`DRDMError`.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..core.errors import DRDMError
from ..core.limits import MAX_SIDE, require_int, require_number, require_seed, require_side
from ..model.checkpoint import PADDINGS

INTEGRATORS = ("fast", "sequential")


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the published 3D recipe at a CPU-friendly size, with the
    recipe of issue 10: batch 4, learning-rate warm-up, amplitude 2 for fresh models)."""

    data: list[str] = field(default_factory=list)
    """Training volumes: folders (searched recursively), image files, or list files (one path a line)."""
    validation: list[str] = field(default_factory=list)
    """Held-out volumes for validation (same forms as ``data``)."""
    holdout: int = 0
    """Without ``validation``: hold out this many volumes of ``data`` (the last ones, sorted by path)."""
    size: int = 64
    """Working grid side N (divisible by 8); every volume is mapped to an N^nd grid."""
    steps: int = 1000
    """Total optimiser steps of the run (a resumed run continues up to this number)."""
    time_limit: float = 0.0
    """Stop after this many seconds of training (0: no limit), then validate and save as at the end."""
    batch_size: int = 4
    """Samples per step and process."""
    lr: float = 1e-4
    """Adam learning rate after the warm-up."""
    warmup_steps: int = 500
    """Steps of linear learning-rate warm-up from ``warmup_lr`` to ``lr`` (0: none). Also protects a
    fine-tuned model from a fresh Adam's first large steps."""
    warmup_lr: float = 1e-5
    """Learning rate of the first step of the warm-up."""
    reg_weight: float = 10.0
    """Weight of Reg in MRSE + cosine + reg_weight * Reg (published: 10)."""
    fold_weight: float = 2.0
    """Weight of the Jacobian folding penalty inside Reg (published: 2)."""
    augment: bool = True
    """Published geometric and intensity augmentations."""
    seed: int = 0
    out: str = "drdm_training"
    """Output folder: checkpoint.pt (with training state), model.pt (weights only), CSV logs."""
    checkpoint_every: int = 100
    validate_every: int = 100
    """Validation every K steps (0: only at the end); needs held-out volumes."""
    validation_samples: int = 2
    """Deformations per held-out volume and t bucket."""
    buckets: int = 4
    """Number of t buckets in the validation report."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    amp: bool = True
    """Mixed precision on CUDA: bf16 autocast (fp16 + gradient scaling where bf16 is missing). The CPU
    trains in fp32 (see ``Trainer._amp_dtype``)."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    integrator: str = "fast"
    """Forward-field integrator: ``fast`` (binary exponentiation) or ``sequential`` (published)."""
    amplitude: float | None = None
    """Control-to-image field gain. None: 2 (the geometric crop rate, spec 2.5) for a fresh model; the
    source model's own (published imports: N / S) for fine-tune and resume. A number forces it."""
    v_scale: float = 4e-5
    control_size: int = 64
    noise_ratio: float = 0.08
    compose_padding: str = "border"
    fine_tune: str = ""
    """Start from this checkpoint (ours, or a published state dict)."""
    resume: str = ""
    """Continue the run saved in this checkpoint.pt (step counter, optimiser, random state)."""
    overwrite: bool = False
    """Replace the files of an earlier run in ``out`` (only the files training writes; nothing else)."""
    force_large: bool = False
    """Train on the CPU even when the estimated memory exceeds what is available."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        """Refuse impossible settings with one line."""
        require_side("size", self.size)
        require_seed("seed", self.seed)
        require_int("control_size", self.control_size, 8, MAX_SIDE)
        for name in ("lr", "warmup_lr", "v_scale"):
            require_number(name, getattr(self, name))
        for name in ("reg_weight", "fold_weight", "noise_ratio"):
            require_number(name, getattr(self, name), positive=False)
        if self.amplitude is not None:
            require_number("amplitude", self.amplitude)
        for name in ("steps", "batch_size", "checkpoint_every", "validation_samples", "buckets"):
            if getattr(self, name) < 1:
                raise DRDMError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("holdout", "validate_every", "threads", "warmup_steps", "time_limit"):
            if getattr(self, name) < 0:
                raise DRDMError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.integrator not in INTEGRATORS:
            raise DRDMError(f"integrator must be one of {INTEGRATORS}, got {self.integrator!r}")
        if self.compose_padding not in PADDINGS:
            raise DRDMError(f"compose_padding must be 'border' or 'zeros', got {self.compose_padding!r}")
        if self.resume and self.fine_tune:
            raise DRDMError("give either resume or fine_tune, not both")
        if self.resume and self.overwrite:
            raise DRDMError("give either resume (continue the run in out) or overwrite (replace it), not both")
        if not self.data:
            raise DRDMError("no training data: give data (folders, files or list files)")

    def learning_rate(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): linear from ``warmup_lr`` at step 0 to
        ``lr`` at step ``warmup_steps``, then ``lr``."""
        if step >= self.warmup_steps:
            return self.lr
        return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup_steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hints() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def _coerce(name: str, value: Any) -> Any:
    """Check and convert one YAML value to the field's type."""
    hint = _hints()[name]
    try:
        if hint == list[str]:
            if isinstance(value, (str, Path)):
                return [str(value)]
            return [str(v) for v in value]
        if hint is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint == (float | None):
            return None if value is None or str(value).lower() == "none" else float(value)
        if hint in (int, float):
            if isinstance(value, bool) or (hint is int and isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return hint(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise DRDMError(f"config key {name!r}: cannot use {value!r} as {getattr(hint, '__name__', hint)}") from exc


def from_mapping(values: dict[str, Any], base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
    """Config from a mapping of keys (dashes or underscores) over ``base`` (default: the defaults)."""
    config = TrainConfig(**asdict(base)) if base is not None else TrainConfig()
    known = {f.name for f in fields(TrainConfig)}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise DRDMError(f"unknown key {key!r} in {source}; known keys: {', '.join(sorted(known))}")
        setattr(config, name, _coerce(name, value))
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Mapping stored in a YAML file (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise DRDMError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DRDMError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(values, dict):
        raise DRDMError(f"config file {path} must hold a mapping of keys to values")
    return values


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus one flag per config field; unset flags keep the YAML/default value."""
    parser.add_argument("--config", help="YAML file of training settings (flags override it)")
    hints = _hints()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        doc = (f.default if f.default is not MISSING else f.default_factory())
        hint = hints[f.name]
        if hint == list[str]:
            parser.add_argument(flag, nargs="+", default=None, dest=f.name, metavar="PATH",
                                help=f"(default: {doc})")
        elif hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, dest=f.name,
                                help=f"(default: {doc})")
        else:
            parser.add_argument(flag, default=None, dest=f.name, metavar=f.name.upper(),
                                help=f"(default: {doc})")


def from_arguments(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the YAML file of ``--config``, then every flag given; validated."""
    config = TrainConfig()
    if getattr(args, "config", None):
        config = from_mapping(read_yaml(args.config), config, source=f"config file {args.config}")
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    config = from_mapping(given, config, source="command line")
    config.validate()
    return config
