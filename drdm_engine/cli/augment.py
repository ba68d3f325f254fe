"""``drdm augment``: deform one image (and its labels), or every case of a dataset, N times.

Kept free of heavy imports at module level (the parser is built on every ``drdm`` call)."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..core.defaults import DEFAULT_DEPTH, DEFAULT_SAMPLES, FIELD_COMPRESSION_DEFAULT, PRECISIONS
from ..core.errors import DRDMError


def default_case() -> tuple[str, str]:
    """The bundled default case: chest CT + 7-structure segmentation shipped in the slicerio wheel (MIT)."""
    import slicerio

    return slicerio.get_testdata_file("CTChest4.nrrd"), slicerio.get_testdata_file("Segmentation.seg.nrrd")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``augment`` sub-command and its options."""
    aug = sub.add_parser("augment", help="deform an image (+ labels), or a dataset, N times and export the cases")
    aug.add_argument("image", nargs="?", help="NIfTI/NRRD/MHA image, 2D or 3D, a folder holding one DICOM series, "
                     "or a dataset (folder of images, .txt/.csv list, nnU-Net raw dataset) (default: bundled chest CT)")
    aug.add_argument("--labels", help="label map or Slicer .seg.nrrd on the image's grid")
    aug.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                     help=f"number of samples per case (default {DEFAULT_SAMPLES})")
    aug.add_argument("--depth", type=int, default=DEFAULT_DEPTH,
                     help=f"diffusion depth T0 in 0…T-1 (default {DEFAULT_DEPTH})")
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
    group = aug.add_argument_group("datasets (IMAGE is a folder of images, a .txt/.csv list or an nnU-Net raw "
                                   "dataset folder)")
    group.add_argument("--labels-dir", help="folder of label files paired with the images by case ID")
    group.add_argument("--labels-pattern", help="label file name with {case} for the case ID, e.g. '{case}_seg.nii.gz'")
    group.add_argument("--workers", type=int, default=1, help="CPU worker processes (under torchrun: one per rank)")
    group.add_argument("--copy-originals", action="store_true", help="also copy the original cases into the output")
    group.add_argument("--pairs", action="store_true",
                       help="registration pairs: (original, sample) and (sample k, sample k+1) with exact ground-truth "
                       "fields and a MONAI datalist pairs.json (also for a single IMAGE)")
    aug.set_defaults(func=run_augment)
    return aug


def _inputs(args: argparse.Namespace):
    """The dataset the arguments name (a single image is a dataset of one case) and its layout."""
    from ..jobs.cases import find_cases, is_dataset, single_case
    from ..jobs.layout import DatasetLayout, ImageLayout

    if args.image is None:
        if args.labels:
            raise DRDMError("--labels needs the IMAGE they belong to: drdm augment IMAGE --labels LABELS --out DIR")
        args.image, args.labels = default_case()
        print(f"drdm: no IMAGE given, using the bundled chest CT case ({args.image})", file=sys.stderr)
    if is_dataset(args.image):
        if args.labels:
            raise DRDMError("--labels names one case's labels; for a dataset use --labels-dir/--labels-pattern")
        dataset = find_cases(args.image, args.labels_dir, args.labels_pattern)
        return dataset, DatasetLayout(dataset)
    if args.labels_dir or args.labels_pattern:
        raise DRDMError("--labels-dir/--labels-pattern pair labels with a dataset's images; for one IMAGE use "
                        "--labels")
    dataset = single_case(args.image, args.labels)
    return dataset, DatasetLayout(dataset) if args.pairs else ImageLayout(dataset.cases[0])


def run_augment(args: argparse.Namespace) -> int:
    """``drdm augment``: check everything, run, say what was written."""
    from ..jobs.run import RESUME_NOTE, run
    from ..jobs.runfolder import stop_signals_interrupt
    from ..jobs.settings import Job

    with stop_signals_interrupt():
        dataset, layout = _inputs(args)
        job = Job(args.samples, args.depth, args.seed, args.model, args.recovery, args.size, args.precision,
                  args.pairs, args.copy_originals, args.field_compression, args.device, args.workers, args.force_large)
        out = Path(args.out)
        try:
            manifest = run(dataset, layout, job, out, args.overwrite, args.progress_lines)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            kept = RESUME_NOTE if layout.resumable else "partial outputs removed"
            print(f"drdm: interrupted ({signal.Signals(signum).name}); {kept}", file=sys.stderr)
            return 128 + signum
    if manifest is None:
        return 0
    totals = manifest["totals"]
    cases = f" of {totals['cases']} cases" if layout.resumable else ""
    print(f"drdm: wrote {totals['samples']} {manifest['mode']} samples{cases} to {out}/ "
          f"(see {out}/{layout.manifest})", file=sys.stderr)
    return 0
