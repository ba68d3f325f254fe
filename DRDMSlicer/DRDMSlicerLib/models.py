"""Models the panel offers: the engine's bundled 3D checkpoints, from the engine's own model registry (the
dimension from its metadata, each with a ``.md`` model card), read without importing the engine; no Qt."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .engine import engineModule

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
    """The engine's bundled 3D models present in this installation (what the panel offers for volumes; a 2D
    model, e.g. for a one-slice volume, is chosen with Browse...)."""
    registry = engineModule("model/registry.py", engineFolder)
    return [ModelChoice(model.name, str(model.path), cardSummary(model.card)) for model in registry.bundled_models(3)]
