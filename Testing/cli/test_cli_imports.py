"""Lazy imports on the CLI path (module sets, not timings): a fresh interpreter runs the command."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


def _modules_after(code: str) -> set[str]:
    """Names in ``sys.modules`` after ``code`` ran in a fresh interpreter with this repository first."""
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_importing_the_package_and_its_cli_does_not_import_torch():
    assert "torch" not in _modules_after("import drdm_engine, drdm_engine.cli.commands, drdm_engine.core.errors")


@pytest.mark.slow
def test_augment_does_not_import_the_trainer():
    loaded = _modules_after("from drdm_engine.cli.commands import main; main(['augment', '--samples', '0', '--out', 'unused'])")
    assert "drdm_engine.warp.case" in loaded
    assert not {"drdm_engine.cli.train", "drdm_engine.training.trainer"} & loaded
