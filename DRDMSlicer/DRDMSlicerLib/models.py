"""Models the panel offers: the engine's bundled checkpoints (``drdm_engine/models/*.pt``, each with a
``.md`` model card) found without importing the engine; no Qt."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .worker import engineSearchPath

NONE = "none"  # the engine's --model value for diffusion only


@dataclass
class ModelChoice:
    """A model by name, its checkpoint path and the first sentence of its card."""

    name: str
    path: str
    summary: str


def cardSummary(card: Path) -> str:
    """First line of a model card that is neither a heading nor empty (empty when there is no card)."""
    if not card.is_file():
        return ""
    for line in card.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!", "|", "<")):
            return line
    return ""


def bundledModels(engineFolder: str | None = None) -> list[ModelChoice]:
    """The engine's bundled volume (3D) models, by name; 2D models (``*2d*``) never apply to a Slicer volume."""
    folder = Path(engineFolder or engineSearchPath()) / "drdm_engine" / "models"
    return [ModelChoice(path.stem, str(path), cardSummary(path.with_suffix(".md")))
            for path in sorted(folder.glob("*.pt")) if "2d" not in path.stem.lower()]
