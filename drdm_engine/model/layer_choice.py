"""The one switch between the network's two layer sets: the fast CPU layers of ``model/cpu/`` where that
folder is present, else PyTorch's own layers (:mod:`.layers`: the same maths, slower on the CPU)."""
from __future__ import annotations

from .layers import PUBLISHED, Layers


def _chosen() -> Layers:
    """The fast set when ``model/cpu/`` can be imported, the published one when that folder is absent
    (any other import error is a bug and is raised)."""
    try:
        from .cpu.layer_set import FAST
    except ModuleNotFoundError as missing:
        if missing.name != f"{__package__}.cpu":
            raise
        return PUBLISHED
    return FAST


LAYERS: Layers = _chosen()
"""The layer set RecResACNet is built from and computes with."""
