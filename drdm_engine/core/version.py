"""The engine's version, declared once: the package, its manifests and checkpoints, and pyproject.toml read it."""

VERSION = "0.1.0"
