"""The engine's version and the oldest torch it runs on, declared once (torch-free: the Slicer module's
installer reads this file too). The package, its manifests and checkpoints, and pyproject.toml's version
read :data:`VERSION`; pyproject.toml's torch requirement, the README and the Slicer installer state
:data:`MINIMUM_TORCH` (``Testing/model/test_torch_compat.py`` holds them equal)."""

VERSION = "0.1.0"
MINIMUM_TORCH = (2, 2)
"""The oldest torch release the engine is checked on (``scripts/check_torch_versions.py``,
``notes/torch_versions.md``)."""
