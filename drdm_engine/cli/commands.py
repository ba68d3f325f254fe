"""The ``drdm`` command line: ``augment`` (the main job), ``import-checkpoint``, ``train``, ``evaluate``, ``info``.

Every user error, the parser's own included, prints one line ``drdm: error: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import signal
import sys

from ..core.errors import DRDMError
from . import augment, models

TRAINING_FREE = ("augment", "info", "import-checkpoint")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``drdm: error:`` line, like every other error of ``drdm``."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"drdm: error: {message}; see '{self.prog} --help'\n")
        sys.exit(2)


def build_parser(with_training: bool = True) -> argparse.ArgumentParser:
    """The ``drdm`` parser; ``with_training=False`` leaves out ``train``/``evaluate`` (and the import of
    the trainer and ``torch.distributed`` they need) for a command that does not use them."""
    parser = Parser(prog="drdm", description="DRDM: diverse, plausible deformations of one patient's image and "
                                             "segmentation (Deformation-Recovery Diffusion Model).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    augment.add_parser(sub)
    models.add_parsers(sub)
    if with_training:
        from .train import register

        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(with_training=not argv or argv[0] not in TRAINING_FREE)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DRDMError as exc:
        print(f"drdm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"drdm: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
