"""The oldest torch declared once, and the torch calls whose form changed across the supported releases
(the releases themselves are run by ``scripts/check_torch_versions.py``, outside CI)."""
from __future__ import annotations

import contextlib
import tomllib

import pytest
import torch
from conftest import ROOT

from drdm_engine.core.version import MINIMUM_TORCH
from drdm_engine.model import compat
from drdm_engine.model.precision import native_bf16

MINIMUM = ".".join(map(str, MINIMUM_TORCH))


def test_pip_the_slicer_installer_and_the_readme_require_the_declared_minimum():
    from DRDMSlicerLib import dependencies

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [d for d in project["dependencies"] if d.startswith("torch")] == [f"torch>={MINIMUM}"]
    assert dependencies.MINIMUM_TORCH == MINIMUM_TORCH
    assert dependencies.torchRequirement() == f">={MINIMUM}"
    assert f"torch ≥ {MINIMUM}" in (ROOT / "README.md").read_text()


def test_autocast_and_compile_queries():
    assert not compat.autocast_enabled("cpu") and not compat.is_compiling()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compat.autocast_enabled("cpu")


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_cuda_bf16_counts_native_support_only(monkeypatch, capability, native):
    """torch >= 2.4 is asked without emulation; an older one's answer comes from the compute capability."""
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability >= (8, 0))
    assert native_bf16(torch.device("cuda")) is native
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert native_bf16(torch.device("cuda")) is native
