"""DRDM engine: deformation-recovery diffusion for instance-specific augmentation (no Slicer, no Qt)."""
from .network import RecResACNet

__version__ = "0.1.0"
__all__ = ["RecResACNet", "__version__"]
