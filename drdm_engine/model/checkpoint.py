"""DRDM checkpoints: our file format (weights + metadata) and import of published bare state dicts.

Our file is a ``torch.save`` dict ``{"format": "drdm-checkpoint", "format_version": 1, "meta": {...},
"state_dict": {...}}`` plus optional training state (``"training"``). ``meta`` holds what is needed
to sample correctly: ``ndims``, ``timesteps``, ``in_channels``, ``rec_num``, ``size`` (working grid
side N), the diffusion schedule (``v_scale``, ``control_size``, ``noise_ratio``, ``amplitude``),
the recovery padding, ``engine_version`` and ``trained_on``.

Files are read with ``torch.load(weights_only=True)``: only tensors and plain data (dicts, lists,
numbers, strings) load; a file holding any other Python object (which could run code when
unpickled) is refused. Metadata is checked field by field before a network is built.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

import torch

from ..core.defaults import TIMESTEPS
from ..core.diffusion import DiffusionSchedule
from ..core.errors import DRDMError
from ..core.limits import MAX_SIDE, require_int, require_number, require_side
from ..core.version import VERSION
from .network import RecResACNet

FORMAT = "drdm-checkpoint"
FORMAT_VERSION = 1
PAYLOAD_KEYS = {"format", "format_version", "meta", "state_dict", "training"}
MAX_TIMESTEPS = 100_000
MAX_IN_CHANNELS = 1024
MAX_REC_NUM = 16
PADDINGS = ("border", "zeros")
AUGMENT_MISMATCH = "the image is {ndims}D; choose a {ndims}D model or --model none"


@dataclass
class ModelMeta:
    """What a checkpoint's weights mean. ``size``: working grid side N the model was trained at."""

    ndims: int
    size: int
    timesteps: int = TIMESTEPS
    in_channels: int = 1
    rec_num: int = 2
    v_scale: float = 4e-5
    control_size: int = 64
    noise_ratio: float = 0.08
    amplitude: float | None = None
    compose_padding: str = "border"
    trained_on: str = "unknown"
    engine_version: str = ""
    notes: dict = field(default_factory=dict)

    @property
    def schedule(self) -> DiffusionSchedule:
        return DiffusionSchedule(self.timesteps, self.v_scale, self.control_size, self.noise_ratio, self.amplitude)

    def build(self) -> RecResACNet:
        return RecResACNet(self.ndims, self.timesteps, self.in_channels, self.rec_num)

    def validate(self) -> "ModelMeta":
        """Refuse (one ``DRDMError`` line) a value no model can have; returns ``self``."""
        if self.ndims not in (2, 3) or isinstance(self.ndims, bool):
            raise DRDMError(f"ndims must be 2 or 3, got {self.ndims!r}")
        require_side("working size N", self.size)
        require_int("timesteps", self.timesteps, 2, MAX_TIMESTEPS)
        require_int("in_channels", self.in_channels, 1, MAX_IN_CHANNELS)
        require_int("rec_num", self.rec_num, 1, MAX_REC_NUM)
        require_number("v_scale", self.v_scale)
        require_int("control_size", self.control_size, 8, MAX_SIDE)
        require_number("noise_ratio", self.noise_ratio, positive=False)
        if self.amplitude is not None:
            require_number("amplitude", self.amplitude)
        if self.compose_padding not in PADDINGS:
            raise DRDMError(f"compose_padding must be one of {PADDINGS}, got {self.compose_padding!r}")
        for name in ("trained_on", "engine_version"):
            if not getattr(self, name).isprintable():
                raise DRDMError(f"{name} holds control characters: {getattr(self, name)[:40]!r}")
        return self

    @classmethod
    def from_dict(cls, values: object) -> "ModelMeta":
        """Metadata from a checkpoint's ``meta`` mapping: every key known, required keys present, each value
        of its field's type (ints for ints, numbers for floats, strings, a dict for ``notes``), validated."""
        if not isinstance(values, dict):
            raise DRDMError(f"metadata is a {type(values).__name__}, not a mapping")
        hints = get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        unknown = [str(k) for k in values if k not in known]
        if unknown:
            raise DRDMError(f"unknown metadata key(s) {', '.join(sorted(unknown))[:80]}")
        missing = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING
                   and n not in values]
        if missing:
            raise DRDMError(f"metadata lacks {', '.join(missing)}")
        for name, value in values.items():
            if not _has_type(value, hints[name]):
                raise DRDMError(f"metadata {name} is {type(value).__name__} {str(value)[:40]!r}, "
                                f"expected {getattr(hints[name], '__name__', hints[name])}")
        return cls(**values).validate()


def _has_type(value: object, hint: object) -> bool:
    """``value`` fits the ModelMeta field type ``hint`` (ints are numbers, bools are neither)."""
    if value is None:
        return hint == (float | None)
    if isinstance(value, bool):
        return False
    if hint is int:
        return isinstance(value, int)
    if hint in (float, float | None):
        return isinstance(value, (int, float))
    return isinstance(value, hint)


@dataclass
class LoadedModel:
    """A network ready for sampling, with its metadata and the file it came from."""

    net: RecResACNet
    meta: ModelMeta
    path: str


def save_checkpoint(path: str | os.PathLike, net: RecResACNet, meta: ModelMeta, training: dict | None = None) -> None:
    """Write our checkpoint atomically (temporary file beside it, then rename); ``training`` must hold only
    tensors and plain data. A failed write leaves no temporary file and raises one ``DRDMError`` line."""
    meta.engine_version = meta.engine_version or VERSION
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": asdict(meta),
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    if training is not None:
        payload["training"] = training
    path = Path(path)
    if path.is_dir():
        raise DRDMError(f"cannot write {path}: it is a folder; give a file name (e.g. {path / 'model.pt'})")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:  # our handle: I/O failures surface as OSError with the system's reason
            torch.save(payload, handle)
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp)
        if isinstance(exc, (OSError, RuntimeError)):  # torch.save reports its own failures as RuntimeError
            raise DRDMError(f"cannot write {path}: {_plain_reason(exc)}; choose a writable place") from exc
        raise


_TORCH_ASSERTION = re.compile(r"\[enforce fail at [^\]]*\]\s*\.?\s*")


def _plain_reason(exc: OSError | RuntimeError) -> str:
    """Why a write failed, in words: the system's reason, or torch's message without its C++ source location."""
    reason = getattr(exc, "strerror", None) or _TORCH_ASSERTION.sub("", str(exc).splitlines()[0])
    return reason[:120] or type(exc).__name__


def _discard(path: Path) -> None:
    """Remove our temporary file if it exists (a failed write may never have created it)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _read(path: str | os.PathLike, what: str = "model file") -> object:
    """Tensors and plain data stored in ``path`` (``torch.load(weights_only=True)``); ``what`` names the file
    in messages. Refuses a missing file, a folder, a non-PyTorch file and any other Python object."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt*") if p.is_file())[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise DRDMError(f"{what} {path} is a folder, not a file; give the checkpoint file itself{hint}")
    if not path.exists():
        raise DRDMError(f"{what} not found: {path}")
    if not path.is_file():
        raise DRDMError(f"{what} {path} is not a regular file (a device, pipe or socket); give a checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of non-torch files: the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found:
            raise DRDMError(f"refused to load {path}: it holds Python objects other than tensors and plain data "
                            f"({found.group(1)}), which could run code; drdm loads weights only. If you trust its "
                            f"source, re-save just its weights: torch.save(model.state_dict(), PATH)") from exc
        raise DRDMError(f"cannot read {what} {path}: not a PyTorch checkpoint of tensors and plain data") from exc
    except OSError as exc:
        raise DRDMError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # torch raises many types for corrupt files
        raise DRDMError(f"cannot read {what} {path}: not a PyTorch checkpoint ({type(exc).__name__})") from exc


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds our checkpoint format (as opposed to a published bare state dict); the file is
    read as tensors and plain data, and refused with one line when it is neither."""
    payload = _read(path)
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def _check_state(state: object, path) -> dict:
    """A state dict: a mapping of names to dense floating-point CPU tensors with finite values."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise DRDMError(f"{path} does not hold a state dict (names mapped to tensors)")
    for name, value in state.items():
        if value.layout != torch.strided or value.device.type != "cpu" or not value.is_floating_point():
            raise DRDMError(f"{path}: weight {name[:60]} is a {value.layout} {value.dtype} tensor on "
                            f"{value.device.type}; weights must be dense floating-point tensors")
        if not bool(torch.isfinite(value).all()):
            raise DRDMError(f"{path}: weight {name[:60]} holds NaN or infinite values; the model is broken")
    return state


def _load_weights(net: RecResACNet, state: dict, path) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(" ".join(str(exc).splitlines()[0:2]).split())
        raise DRDMError(f"model file {path} does not fit a {net.ndims}D RecResACNet: {first}") from exc


def _build(meta: ModelMeta, state: dict, path) -> RecResACNet:
    """The network ``meta`` describes with ``state`` loaded; the state's shapes are checked against the
    metadata first (a network is never built from sizes the weights do not have)."""
    shape = infer_published_meta(state, path)
    declared = {k: getattr(meta, k) for k in shape}
    if declared != shape:
        raise DRDMError(f"{path}: metadata {declared} does not match its weights {shape}")
    net = meta.build()
    _load_weights(net, state, path)
    return net


def load_checkpoint(path: str | os.PathLike, ndims: int | None = None, device: str | torch.device = "cpu",
                    with_training: bool = False, mismatch: str = AUGMENT_MISMATCH
                    ) -> LoadedModel | tuple[LoadedModel, dict | None]:
    """Load our checkpoint into an eval-mode network on ``device``.

    Refuses (``DRDMError``) a missing or corrupt file, a bare state dict (import it first), a
    newer format, a dimension other than ``ndims`` (when given; ``mismatch``, formatted with ``ndims``,
    ends that refusal with what the caller's user can do) and weights that do not fit.
    """
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DRDMError(f"{path} is not a DRDM checkpoint; a published state dict is converted with "
                        f"'drdm import-checkpoint {path} OUT.pt --size N'")
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DRDMError(f"{path}: corrupt checkpoint (format_version {str(version)[:20]!r})")
    if version > FORMAT_VERSION:
        raise DRDMError(f"{path} was written by a newer drdm (format {version}); upgrade drdm_engine")
    unknown = sorted(str(k) for k in payload if k not in PAYLOAD_KEYS)
    if unknown or "meta" not in payload or "state_dict" not in payload:
        problem = f"unknown entries {', '.join(unknown)[:80]}" if unknown else "no meta or state_dict"
        raise DRDMError(f"{path}: corrupt checkpoint ({problem})")
    try:
        meta = ModelMeta.from_dict(payload["meta"])
    except DRDMError as exc:
        raise DRDMError(f"{path}: corrupt checkpoint metadata: {exc}") from exc
    if ndims is not None and meta.ndims != ndims:
        raise DRDMError(f"model {path} is {meta.ndims}D but {mismatch.format(ndims=ndims)}")
    net = _build(meta, _check_state(payload["state_dict"], path), path)
    training = payload.get("training")
    if with_training and training is not None and not isinstance(training, dict):
        raise DRDMError(f"{path}: corrupt checkpoint (training state is a {type(training).__name__})")
    loaded = LoadedModel(net.to(device).eval(), meta, str(path))
    return (loaded, training) if with_training else loaded


def infer_published_meta(state: dict, path: object = "state dict") -> dict:
    """``ndims``, ``timesteps`` and ``in_channels`` of a published RecResACNet state dict."""
    try:
        conv0 = state["b1.0.conv0.weight"]
        table = state["time_embed.weight"]
    except (KeyError, TypeError) as exc:
        raise DRDMError(f"{path}: not a RecResACNet state dict (no b1.0.conv0.weight / time_embed.weight)") from exc
    if conv0.dim() not in (4, 5) or table.dim() != 2:
        raise DRDMError(f"{path}: not a RecResACNet state dict (b1.0.conv0.weight has {conv0.dim()} dimensions, "
                        f"time_embed.weight {table.dim()}; expected 4 or 5, and 2)")
    return {"ndims": conv0.dim() - 2, "timesteps": int(table.shape[0]), "in_channels": int(conv0.shape[1])}


def import_published(source: str | os.PathLike, size: int, trained_on: str = "published DRDM checkpoint",
                     **schedule) -> tuple[RecResACNet, ModelMeta]:
    """Convert a published bare state dict into a network and its metadata (``size``: its working side N).

    ``schedule`` overrides ModelMeta fields (``v_scale``, ``amplitude``, ``compose_padding``, ...).
    """
    state = _read(source, "checkpoint")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        raise DRDMError(f"{source} is already a DRDM checkpoint; nothing to import")
    state = _check_state(state, source)
    meta = ModelMeta(size=size, trained_on=trained_on, **infer_published_meta(state, source), **schedule).validate()
    return _build(meta, state, source), meta


def describe(meta: ModelMeta) -> str:
    """One line for logs and manifests."""
    return (f"{meta.ndims}D RecResACNet, N={meta.size}, T={meta.timesteps}, v_scale={meta.v_scale:g}, "
            f"trained on {meta.trained_on}")
