"""``drdm import-checkpoint`` (a published state dict to our checkpoint) and ``drdm info`` (the engine and
its model)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import DRDMError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``import-checkpoint`` and ``info`` sub-commands."""
    imp = sub.add_parser("import-checkpoint", help="convert a published RecResACNet state dict to a DRDM checkpoint")
    imp.add_argument("source", help="published .pth state dict")
    imp.add_argument("output", help="DRDM checkpoint to write (.pt)")
    imp.add_argument("--size", type=int, required=True,
                     help="working grid side N it was trained at (e.g. 256 2D, 128 3D)")
    imp.add_argument("--trained-on", default="published DRDM checkpoint", help="what it was trained on")
    imp.add_argument("--v-scale", type=float, default=None, help="velocity scale (default 4e-5)")
    imp.add_argument("--amplitude", type=float, default=None, help="control-to-image gain (default published N/S)")
    imp.add_argument("--compose-padding", choices=("zeros", "border"), default=None,
                     help="padding of the recovery composition (published 2D cardiac: zeros; 3D: border)")
    imp.add_argument("--overwrite", action="store_true")
    imp.set_defaults(func=import_checkpoint)
    info = sub.add_parser("info", help="show the engine version and the model in use")
    info.add_argument("--model", default=None)
    info.set_defaults(func=show_info)


def import_checkpoint(args: argparse.Namespace) -> int:
    """Convert ``args.source`` (a published bare state dict) into our checkpoint ``args.output``."""
    from ..model.checkpoint import describe, import_published, save_checkpoint

    target = Path(args.output)
    if target.exists() and not target.is_dir() and not args.overwrite:
        raise DRDMError(f"{target} exists; choose another OUTPUT or add --overwrite")
    overrides = {k: v for k, v in {"v_scale": args.v_scale, "amplitude": args.amplitude,
                                   "compose_padding": args.compose_padding}.items() if v is not None}
    net, meta = import_published(args.source, args.size, trained_on=args.trained_on, **overrides)
    save_checkpoint(target, net, meta)
    print(f"drdm: wrote {target}: {describe(meta)}", file=sys.stderr)
    return 0


def show_info(args: argparse.Namespace) -> int:
    """The engine's version and the model ``--model`` (default: the bundled default model) describes."""
    from ..core.version import VERSION
    from ..model.checkpoint import describe, load_checkpoint
    from ..model.registry import DEFAULT_MODEL

    print(f"drdm_engine {VERSION}")
    path = args.model or DEFAULT_MODEL
    if args.model is None and not DEFAULT_MODEL.is_file():
        print(f"model {path}: absent (augment runs in diffusion-only mode)")
    else:
        print(f"model {path}: {describe(load_checkpoint(path).meta)}")
    return 0
