"""The ONE list of models shipped with the engine (``drdm_engine/models/``): name, file, dimension and a
one-line description; read by ``--model NAME``, by the default-model choice and by the Slicer module's
model list. Torch-free, so that Slicer's own process can read it without loading the engine."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


@dataclass(frozen=True)
class BundledModel:
    """A checkpoint shipped in ``drdm_engine/models``: its ``name`` (``--model NAME``), file, image
    dimension and a one-line description; its model card is the ``.md`` file beside it."""

    name: str
    file: str
    ndims: int
    description: str

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.file

    @property
    def card(self) -> Path:
        return self.path.with_suffix(".md")

    @property
    def present(self) -> bool:
        """Whether the checkpoint is shipped in this installation."""
        return self.path.is_file()


DEFAULT_3D = BundledModel("default3d", "drdm_default_3d.pt", 3,
                          "DRDM default 3D model (bundled once it meets its validation bar; see README)")
BUNDLED = (DEFAULT_3D,
           BundledModel("cmr2d", "drdm_cmr_2d.pt", 2, "published DRDM 2D cardiac MRI model (256², Apache-2.0; "
                                                      "card: drdm_engine/models/drdm_cmr_2d.md)"))
NAMED_MODELS = {model.name: model for model in BUNDLED}
DEFAULT_MODEL = DEFAULT_3D.path
"""The bundled default 3D model: used by ``--model default`` (and no ``--model``) when it exists."""


def bundled_models(ndims: int | None = None) -> list[BundledModel]:
    """The bundled models present in this installation (of dimension ``ndims`` when given)."""
    return [m for m in BUNDLED if m.present and (ndims is None or m.ndims == ndims)]


def resolve_name(model: str) -> str:
    """The bundled file of a model name (case-insensitive), anything else unchanged (a path)."""
    named = NAMED_MODELS.get(model.lower())
    return str(named.path) if named is not None else model
