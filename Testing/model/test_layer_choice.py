"""The one switch between the layer sets: without ``model/cpu/`` the engine builds RecResACNet from
PyTorch's own layers and gives, bit for bit, what the fast layers' reference path gives."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from drdm_engine.model.cpu.layer_set import FastLayers
from drdm_engine.model.layer_choice import LAYERS

ENGINE = ROOT / "drdm_engine"

# The network, its gradients and a short recovery, with the engine found first in ROOT.
RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, ROOT)
    import torch
    from drdm_engine.model import sampler
    from drdm_engine.model.layer_choice import LAYERS
    from drdm_engine.model.network import RecResACNet

    torch.set_num_threads(1)
    results = {"set": type(LAYERS).__name__, "cpu imported": "drdm_engine.model.cpu" in sys.modules}
    for ndims, side in ((2, 16), (3, 16)):
        torch.manual_seed(0)
        model = RecResACNet(ndims, timesteps=8)
        image = torch.rand((2, 1) + (side,) * ndims, generator=torch.Generator().manual_seed(1))
        t = torch.tensor([7, 3])
        with torch.no_grad(), LAYERS.reference():
            results[f"{ndims} output"] = model.eval()(image, t)
        with LAYERS.reference():
            model.train()(image, t).square().sum().backward()
        results[f"{ndims} gradients"] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        field = torch.randn((1, ndims) + (side,) * ndims, generator=torch.Generator().manual_seed(2))
        results[f"{ndims} recovery"] = sampler.recover(model.eval(), image[:1], field, range(2, -1, -1), sampler.REFERENCE)
        results[f"{ndims} keys"] = list(model.state_dict())
    torch.save(results, OUT)
""")


def _run(root: Path, out: Path) -> dict:
    """:data:`RUN` in a fresh interpreter with the engine of ``root``; its results."""
    code = f"ROOT, OUT = {str(root)!r}, {str(out)!r}\n" + RUN
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return torch.load(out)


@pytest.mark.slow
def test_without_the_cpu_folder_the_network_gives_the_reference_outputs_bit_for_bit(tmp_path):
    """A copy of the engine with ``model/cpu/`` deleted, against this checkout's reference path."""
    shutil.copytree(ENGINE, tmp_path / "drdm_engine", ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    shutil.rmtree(tmp_path / "drdm_engine" / "model" / "cpu")
    published = _run(tmp_path, tmp_path / "published.pt")
    fast = _run(ENGINE.parent, tmp_path / "fast.pt")
    assert published.pop("set") == "Layers" and not published.pop("cpu imported")
    assert fast.pop("set") == "FastLayers" and fast.pop("cpu imported")
    assert published.keys() == fast.keys()
    for name, value in fast.items():
        if name.endswith("keys"):
            assert published[name] == value  # checkpoints load either way
        else:
            assert torch.equal(published[name], value), name


def test_the_engine_uses_the_fast_layers_where_the_cpu_folder_is_present():
    assert isinstance(LAYERS, FastLayers)
