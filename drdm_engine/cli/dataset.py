"""Command-line side of dataset mode of ``drdm augment``: its options, when it applies, and the run.
Kept free of heavy imports (the parser is built on every ``drdm`` call)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..core.errors import DRDMError


def add_arguments(parser) -> None:
    """Dataset options of ``drdm augment``."""
    group = parser.add_argument_group("datasets (IMAGE is a folder of images, a .txt/.csv list or an nnU-Net raw "
                                      "dataset folder)")
    group.add_argument("--labels-dir", help="folder of label files paired with the images by case ID")
    group.add_argument("--labels-pattern", help="label file name with {case} for the case ID, e.g. '{case}_seg.nii.gz'")
    group.add_argument("--workers", type=int, default=1, help="CPU worker processes (under torchrun: one per rank)")
    group.add_argument("--copy-originals", action="store_true", help="also copy the original cases into the output")
    group.add_argument("--pairs", action="store_true",
                       help="registration pairs: (original, sample) and (sample k, sample k+1) with exact ground-truth "
                       "fields and a MONAI datalist pairs.json (also for a single IMAGE)")


def wants_dataset(args) -> bool:
    """True when ``drdm augment`` runs in dataset mode."""
    from ..jobs.cases import is_dataset

    return args.image is not None and (args.pairs or is_dataset(args.image))


def run_from_args(args) -> int:
    """``drdm augment`` in dataset mode."""
    from ..jobs.cases import find_cases, is_dataset
    from ..jobs.dataset import MANIFEST, Job, single_case
    from ..jobs.dataset_run import run

    if is_dataset(args.image):
        if args.labels:
            raise DRDMError("--labels names one case's labels; for a dataset use --labels-dir/--labels-pattern")
        dataset = find_cases(args.image, args.labels_dir, args.labels_pattern)
    else:
        dataset = single_case(args.image, args.labels)
    job = Job(args.samples, args.depth, args.seed, args.model, args.recovery, args.size, args.precision,
              pairs=args.pairs, copy_originals=args.copy_originals, device=args.device, workers=args.workers)
    out = Path(args.out)
    try:
        manifest = run(dataset, job, out, args.overwrite, args.progress_lines)
    except KeyboardInterrupt:
        print("drdm: interrupted; finished cases are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    if manifest is not None:
        totals = manifest["totals"]
        print(f"drdm: wrote {totals['samples']} {manifest['mode']} samples of {totals['cases']} cases to {out}/ "
              f"(see {out}/{MANIFEST})", file=sys.stderr)
    return 0
