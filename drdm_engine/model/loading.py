"""Which model a run uses, loaded once per image dimension: ``--model`` resolved against the registry
(a bundled name, the default model, ``none`` for diffusion only, or a checkpoint path)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import DRDMError
from .checkpoint import LoadedModel, load_checkpoint
from .registry import DEFAULT_MODEL, resolve_name

NO_MODEL = "none"


def resolve_model(model: str | None, ndims: int, device: torch.device) -> LoadedModel | None:
    """``None``/``"default"``: the bundled default model when it exists and fits ``ndims`` (else diffusion
    only); ``"none"``: diffusion only; a bundled model's name (:mod:`.registry`); anything else: a path."""
    if model is not None and model.lower() == NO_MODEL:
        return None
    if model is None or model.lower() == "default":
        if not DEFAULT_MODEL.is_file():
            return None
        loaded = load_checkpoint(DEFAULT_MODEL, device=device)
        return loaded if loaded.meta.ndims == ndims else None
    path = resolve_name(model)
    if Path(path).is_dir():
        raise DRDMError(f"--model {model} is a folder; give a checkpoint file (.pt, written by drdm train or "
                        f"drdm import-checkpoint) or a bundled model's name")
    return load_checkpoint(path, ndims=ndims, device=device)


class ModelCache:
    """The model of one ``--model`` choice on one device, loaded at most once per image dimension."""

    def __init__(self, model: str | None, device: torch.device):
        self.model, self.device = model, device
        self.loaded: dict[int, LoadedModel | None] = {}

    def get(self, ndims: int) -> LoadedModel | None:
        """The model for ``ndims``-D images (``None``: diffusion only)."""
        if ndims not in self.loaded:
            self.loaded[ndims] = resolve_model(self.model, ndims, self.device)
        return self.loaded[ndims]
