"""DRDM checkpoints: our file format (weights + metadata) and import of published bare state dicts.

Our file is a ``torch.save`` dict ``{"format": "drdm-checkpoint", "format_version": 1, "meta": {...},
"state_dict": {...}}`` plus optional training state (``"training"``). ``meta`` holds what is needed
to sample correctly: ``ndims``, ``timesteps``, ``in_channels``, ``rec_num``, ``size`` (working grid
side N), the diffusion schedule (``v_scale``, ``control_size``, ``noise_ratio``, ``amplitude``),
the recovery padding, ``engine_version`` and ``trained_on``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, asdict
from pathlib import Path

import torch

from .diffusion import DiffusionSchedule
from .errors import DRDMError
from .network import RecResACNet

FORMAT = "drdm-checkpoint"
FORMAT_VERSION = 1
DEFAULT_MODEL = Path(__file__).parent / "models" / "drdm_default_3d.pt"


@dataclass
class ModelMeta:
    """What a checkpoint's weights mean. ``size``: working grid side N the model was trained at."""

    ndims: int
    size: int
    timesteps: int = 80
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


@dataclass
class LoadedModel:
    """A network ready for sampling, with its metadata and the file it came from."""

    net: RecResACNet
    meta: ModelMeta
    path: str


def _engine_version() -> str:
    from . import __version__
    return __version__


def save_checkpoint(path: str | os.PathLike, net: RecResACNet, meta: ModelMeta, training: dict | None = None) -> None:
    """Write our checkpoint atomically (temporary file, then rename)."""
    meta.engine_version = meta.engine_version or _engine_version()
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": asdict(meta),
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    if training is not None:
        payload["training"] = training
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _read(path: str | os.PathLike) -> object:
    path = Path(path)
    if not path.is_file():
        raise DRDMError(f"model file not found: {path} (give --model PATH, or --model none for diffusion only)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise DRDMError(f"cannot read model file {path}: not a PyTorch checkpoint ({type(exc).__name__})") from exc


def _load_weights(net: RecResACNet, state: dict, path) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise DRDMError(f"model file {path} does not fit a {net.ndims}D RecResACNet: {' '.join(first)}") from exc


def load_checkpoint(path: str | os.PathLike, ndims: int | None = None, device: str | torch.device = "cpu",
                    with_training: bool = False) -> LoadedModel | tuple[LoadedModel, dict | None]:
    """Load our checkpoint into an eval-mode network on ``device``.

    Refuses (``DRDMError``) a missing or corrupt file, a bare state dict (import it first), a
    newer format, a dimension other than ``ndims`` (when given) and weights that do not fit.
    """
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DRDMError(f"{path} is not a DRDM checkpoint; a published state dict is converted with "
                        f"'drdm import-checkpoint {path} OUT.pt --size N'")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise DRDMError(f"{path} was written by a newer drdm (format {payload['format_version']}); upgrade drdm_engine")
    meta = ModelMeta(**payload["meta"])
    if ndims is not None and meta.ndims != ndims:
        raise DRDMError(f"model {path} is {meta.ndims}D but the image is {ndims}D; choose a {ndims}D model "
                        f"or --model none")
    net = meta.build()
    _load_weights(net, payload["state_dict"], path)
    loaded = LoadedModel(net.to(device).eval(), meta, str(path))
    return (loaded, payload.get("training")) if with_training else loaded


def infer_published_meta(state: dict) -> dict:
    """``ndims``, ``timesteps`` and ``in_channels`` of a published RecResACNet state dict."""
    try:
        conv0 = state["b1.0.conv0.weight"]
        table = state["time_embed.weight"]
    except (KeyError, TypeError) as exc:
        raise DRDMError("not a RecResACNet state dict (no b1.0.conv0.weight / time_embed.weight)") from exc
    return {"ndims": conv0.dim() - 2, "timesteps": int(table.shape[0]), "in_channels": int(conv0.shape[1])}


def import_published(source: str | os.PathLike, size: int, trained_on: str = "published DRDM checkpoint",
                     **schedule) -> tuple[RecResACNet, ModelMeta]:
    """Convert a published bare state dict into a network and its metadata (``size``: its working side N).

    ``schedule`` overrides ModelMeta fields (``v_scale``, ``amplitude``, ``compose_padding``, ...).
    """
    state = _read(source)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        raise DRDMError(f"{source} is already a DRDM checkpoint; nothing to import")
    if not isinstance(state, dict):
        raise DRDMError(f"{source} does not hold a state dict")
    meta = ModelMeta(size=size, trained_on=trained_on, **infer_published_meta(state), **schedule)
    if size % 8:
        raise DRDMError(f"working size must be divisible by 8, got {size}")
    net = meta.build()
    _load_weights(net, state, source)
    return net, meta


def describe(meta: ModelMeta) -> str:
    """One line for logs and manifests."""
    return (f"{meta.ndims}D RecResACNet, N={meta.size}, T={meta.timesteps}, v_scale={meta.v_scale:g}, "
            f"trained on {meta.trained_on}")
