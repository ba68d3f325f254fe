"""Models shipped with the engine under a name, for ``--model NAME`` (a path still works everywhere)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL = MODELS_DIR / "drdm_default_3d.pt"
"""The bundled default 3D model: used by ``--model default`` (and no ``--model``) when it exists."""


@dataclass(frozen=True)
class NamedModel:
    """A bundled checkpoint: its file in ``drdm_engine/models``, dimension and a one-line description."""

    file: str
    ndims: int
    description: str

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.file


NAMED_MODELS = {
    "cmr2d": NamedModel("drdm_cmr_2d.pt", 2, "published DRDM 2D cardiac MRI model (256², Apache-2.0; "
                                              "card: drdm_engine/models/drdm_cmr_2d.md)"),
}


def resolve_name(model: str) -> str:
    """The bundled file of a model name (case-insensitive), anything else unchanged (a path)."""
    named = NAMED_MODELS.get(model.lower())
    return str(named.path) if named is not None else model
