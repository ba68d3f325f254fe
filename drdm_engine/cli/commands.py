"""The ``drdm`` command line: ``augment`` (the main job), ``import-checkpoint``, ``train``, ``evaluate``, ``info``.

User errors print one line ``drdm: error: ...`` and exit with code 2.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from ..core.errors import DRDMError

DEFAULT_SAMPLES = 3
DEFAULT_DEPTH = 32


def default_case() -> tuple[str, str]:
    """The bundled default case: chest CT + 7-structure segmentation shipped in the slicerio wheel (MIT)."""
    import slicerio

    return slicerio.get_testdata_file("CTChest4.nrrd"), slicerio.get_testdata_file("Segmentation.seg.nrrd")


class _Progress:
    """Progress as a tqdm bar on stderr, or as ``drdm-progress <fraction> <text>`` lines on stdout."""

    def __init__(self, lines: bool):
        self.lines = lines
        self.bar = None
        if not lines:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
                            file=sys.stderr)

    def __call__(self, fraction: float, text: str) -> None:
        if self.lines:
            print(f"drdm-progress {fraction:.4f} {text}", flush=True)
        else:
            self.bar.n = int(1000 * fraction)
            self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _augment(args: argparse.Namespace) -> int:
    from ..jobs.runfolder import stop_signals_interrupt

    with stop_signals_interrupt():
        return _run_augment(args)


def _run_augment(args: argparse.Namespace) -> int:
    from ..io.read import check_image_info, inspect_image, is_single_slice, read_image, read_labels
    from ..jobs.export import MANIFEST, earlier_samples, output_matcher, write_run
    from ..jobs.resources import check, estimate
    from ..jobs.runfolder import RunFolder
    from ..model.precision import recovery_dtype
    from ..warp.case import DIFFUSION_ONLY_SIZE, check_settings, generate, resolve_device, resolve_model
    from .dataset import run_from_args, wants_dataset

    if wants_dataset(args):
        return run_from_args(args)
    if args.image is None:
        if args.labels:
            raise DRDMError("--labels needs the IMAGE they belong to: drdm augment IMAGE --labels LABELS --out DIR")
        args.image, args.labels = default_case()
        print(f"drdm: no IMAGE given, using the bundled chest CT case ({args.image})", file=sys.stderr)
    check_settings(args.samples, args.seed, args.size)
    info = inspect_image(args.image)
    check_image_info(info, args.image)
    label_info = inspect_image(args.labels, "labels") if args.labels else None
    device = resolve_device(args.device)
    nd = info.ndims
    model = resolve_model(args.model, nd, device)
    size = model.meta.size if model else (args.size or DIFFUSION_ONLY_SIZE[nd])
    out = Path(args.out)
    folder = RunFolder(out, args.overwrite, output_matcher(args.image, args.samples, args.labels))
    progress = None
    started = time.perf_counter()
    try:
        staging = folder.open()
        if not args.force_large:
            check(estimate(info, label_info, args.samples, size, args.field_compression, model is not None), out,
                  args.samples)
        image = read_image(args.image, pixel_type=None, keep_3d=True, info=info)
        labels = read_labels(args.labels, image, label_info) if args.labels else None
        if model is None:
            print("drdm: no trained model for this image: diffusion-only mode (random forward fields, no recovery)",
                  file=sys.stderr)
        if is_single_slice(image):
            print("drdm: one-slice 3D image: deformed in-plane, written back in 3D with its geometry", file=sys.stderr)
        progress = _Progress(args.progress_lines)
        cases = generate(image, labels, model, args.samples, args.depth, args.seed, device, args.recovery,
                         args.size, progress, args.precision)
        dtype = recovery_dtype(args.precision, device) if model else None
        settings = {"samples": args.samples, "depth": args.depth, "seed": args.seed, "recovery": args.recovery,
                    "device": str(device), "working_size": size, "field_compression": args.field_compression,
                    "network_precision": ("bf16 autocast" if dtype else "fp32") if model else None}
        manifest = write_run(staging, args.image, args.labels, labels, cases, model, settings, started,
                             args.field_compression)
        folder.commit(MANIFEST)
    except BaseException:
        folder.abort()
        raise
    finally:
        if progress is not None:
            progress.close()
    print(f"drdm: wrote {len(manifest['samples'])} {manifest['mode']} samples to {out}/ (see {out}/manifest.json)",
          file=sys.stderr)
    earlier = earlier_samples(out, args.image, args.samples, args.labels)
    if earlier:
        print(f"drdm: note: {len(earlier)} files of an earlier run with more samples remain in {out}/ "
              f"({earlier[0]}{', …' if len(earlier) > 1 else ''}); the manifest lists this run's samples only",
              file=sys.stderr)
    return 0


def _import_checkpoint(args: argparse.Namespace) -> int:
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


def _info(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..model.checkpoint import describe, load_checkpoint
    from ..model.registry import DEFAULT_MODEL

    print(f"drdm_engine {__version__}")
    path = args.model or DEFAULT_MODEL
    if args.model is None and not DEFAULT_MODEL.is_file():
        print(f"model {path}: absent (augment runs in diffusion-only mode)")
    else:
        print(f"model {path}: {describe(load_checkpoint(path).meta)}")
    return 0


TRAINING_FREE = ("augment", "info", "import-checkpoint")


def build_parser(with_training: bool = True) -> argparse.ArgumentParser:
    """The ``drdm`` parser; ``with_training=False`` leaves out ``train``/``evaluate`` (and the import of
    the trainer and ``torch.distributed`` they need) for a command that does not use them."""
    from ..io.write import FIELD_COMPRESSION_DEFAULT
    from ..model.precision import PRECISIONS

    parser = argparse.ArgumentParser(prog="drdm", description="DRDM: diverse, plausible deformations of one "
                                     "patient's image and segmentation (Deformation-Recovery Diffusion Model).")
    sub = parser.add_subparsers(dest="command", required=True)

    aug = sub.add_parser("augment", help="deform an image (+ labels) N times and export the cases")
    aug.add_argument("image", nargs="?", help="NIfTI/NRRD/MHA image, 2D or 3D, or a folder holding one DICOM "
                     "series (default: bundled chest CT)")
    aug.add_argument("--labels", help="label map or Slicer .seg.nrrd on the image's grid")
    aug.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"number of samples (default {DEFAULT_SAMPLES})")
    aug.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help=f"diffusion depth T0 in 0…T-1 (default {DEFAULT_DEPTH})")
    aug.add_argument("--seed", type=int, default=0, help="random seed (same seed, same samples on the CPU)")
    aug.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --overwrite)")
    aug.add_argument("--model", default=None, help="checkpoint path, a bundled model's name (cmr2d: the "
                     "published 2D cardiac MRI model), 'default' (bundled model) or 'none' (diffusion only); "
                     "default: the bundled model when it fits the image's dimension")
    aug.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps (default auto)")
    aug.add_argument("--recovery", choices=("published", "from-depth"), default="published",
                     help="published: all steps T-1…0 (default); from-depth: T0…0, faster")
    aug.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="recovery network precision: auto = bf16 on a GPU with native bf16, fp32 on the "
                     "CPU (faster there than bf16 with the fast layers: bench/bench_network.py)")
    aug.add_argument("--size", type=int, default=None, help="working grid side in diffusion-only mode "
                     "(default 128 in 3D, 256 in 2D); a model uses its own")
    aug.add_argument("--overwrite", action="store_true", help="allow writing into an existing non-empty folder "
                     "(same-named outputs are replaced, other files never touched)")
    aug.add_argument("--field-compression", type=int, choices=range(10), default=FIELD_COMPRESSION_DEFAULT,
                     metavar="0-9", help="gzip level of the displacement fields; 0 writes them uncompressed "
                     f"(faster, larger) (default {FIELD_COMPRESSION_DEFAULT})")
    aug.add_argument("--force-large", action="store_true",
                     help="run even when the estimated memory or disk exceeds what is available")
    aug.add_argument("--progress-lines", action="store_true",
                     help="print 'drdm-progress <fraction> <text>' lines on stdout instead of a bar")
    from .dataset import add_arguments

    add_arguments(aug)
    aug.set_defaults(func=_augment)

    imp = sub.add_parser("import-checkpoint", help="convert a published RecResACNet state dict to a DRDM checkpoint")
    imp.add_argument("source", help="published .pth state dict")
    imp.add_argument("output", help="DRDM checkpoint to write (.pt)")
    imp.add_argument("--size", type=int, required=True, help="working grid side N it was trained at (e.g. 256 2D, 128 3D)")
    imp.add_argument("--trained-on", default="published DRDM checkpoint", help="what it was trained on")
    imp.add_argument("--v-scale", type=float, default=None, help="velocity scale (default 4e-5)")
    imp.add_argument("--amplitude", type=float, default=None, help="control-to-image gain (default published N/S)")
    imp.add_argument("--compose-padding", choices=("zeros", "border"), default=None,
                     help="padding of the recovery composition (published 2D cardiac: zeros; 3D: border)")
    imp.add_argument("--overwrite", action="store_true")
    imp.set_defaults(func=_import_checkpoint)

    if with_training:
        from .train import register

        register(sub)

    info = sub.add_parser("info", help="show the engine version and the model in use")
    info.add_argument("--model", default=None)
    info.set_defaults(func=_info)
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
        print(f"drdm: interrupted ({signal.Signals(signum).name}); partial outputs removed", file=sys.stderr)
        return 128 + signum


