"""The public torch calls whose form changed since the oldest torch the engine runs on
(:data:`..core.version.MINIMUM_TORCH`).

Each call is chosen by what the installed torch offers (a feature test, not a version number), so
a build that backports or renames something still gets the right form. ``scripts/check_torch_versions.py``
runs the engine on each torch release it is given; ``notes/torch_versions.md`` has its table.
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

import torch



def _dynamo_is_compiling() -> bool:
    """Before torch 2.3: dynamo's own answer, and False while dynamo is not even loaded."""
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo is not None and dynamo.is_compiling()


is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", None) or _dynamo_is_compiling
"""Whether ``torch.compile`` is tracing the caller (``torch.compiler.is_compiling``, torch >= 2.3)."""


def _autocast_query() -> Callable[[str], bool]:
    """``torch.is_autocast_enabled(device_type)`` (torch >= 2.4); before it the call took no device and
    answered for CUDA, and the CPU had ``torch.is_autocast_cpu_enabled()``."""
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:
        return lambda device_type: (torch.is_autocast_cpu_enabled() if device_type == "cpu"
                                    else torch.is_autocast_enabled())
    return torch.is_autocast_enabled


autocast_enabled: Callable[[str], bool] = _autocast_query()
"""Whether autocast is on for ``device_type`` (``"cpu"``, ``"cuda"``) in the calling thread."""


def cuda_bf16_native(device: torch.device) -> bool:
    """Whether the CUDA GPU ``device`` computes bf16 natively (compute capability 8.0 or later). From
    torch 2.4 on ``torch.cuda.is_bf16_supported()`` also counts emulation (slower than fp32), so it is
    asked with ``including_emulation=False`` where it takes that argument."""
    if "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters:
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_capability(device) >= (8, 0)
