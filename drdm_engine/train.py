"""``python -m drdm_engine.train …`` and ``torchrun --nproc_per_node K -m drdm_engine.train …``."""
import sys

from .cli.train import main

if __name__ == "__main__":
    sys.exit(main())
