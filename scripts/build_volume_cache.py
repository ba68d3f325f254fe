"""Build the training-data cache: the 3D CT and MR volumes that installable packages ship, mapped onto
the cubic working grid, in ONE uint8 tensor file with their subjects, sources and licences.

Sources (nothing is downloaded; missing packages are named in the error):
- ``CTChest4.nrrd``: chest CT, from the ``slicerio`` wheel (MIT).
- Colin27 T1 (``ch2better``, ``ch2bet``: one human subject) and the INIA19 macaque T1 template
  (``inia19-t1-brain``) from the Debian package ``mricron-data`` (``apt-get install mricron-data``;
  /usr/share/mricron/templates; Debian's copyright file: BSD-3-clause for the package).
- ``anatomical.nii``: a small human T1 brain (2 mm) from nibabel's test data (nibabel wheel, MIT).

Whole subjects are held out (default: ``inia19``). The 3D cache is ``(V, 1, N, N, N)`` uint8 (N = 64:
about 0.26 MB a volume). ``--slices2d`` also writes a 2D cache of axial slices (tensor axis 0 of the
working grid, which is the slice axis of these acquisitions) with content, taken from a
``--slice-source-size`` working grid and area-averaged to ``--slice-size``.

    python scripts/build_volume_cache.py --out training_data/volumes_64.pt --size 64 \\
        --slices2d training_data/slices_64.pt
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from drdm_engine.core.errors import DRDMError
from drdm_engine.training.data import load_working_volume, save_cache

MRICRON = Path("/usr/share/mricron/templates")
MIN_CONTENT = 0.15
"""A slice is kept when at least this fraction of its pixels is above 5 % of the intensity range."""


@dataclass(frozen=True)
class Source:
    name: str
    subject: str
    package: str
    licence: str
    description: str

    def path(self, mricron: Path) -> Path:
        if self.package == "slicerio":
            import slicerio
            return Path(slicerio.get_testdata_file(self.name))
        if self.package == "nibabel":
            import nibabel
            return Path(nibabel.__file__).parent / "tests" / "data" / self.name
        return mricron / self.name


SOURCES = (
    Source("CTChest4.nrrd", "chest-ct", "slicerio", "MIT", "human chest CT, 128x128x34, 3.05x3.05x10 mm"),
    Source("ch2better.nii.gz", "colin27", "mricron-data", "BSD-3-clause (Debian copyright)",
           "Colin27 human T1 brain, 0.5 mm"),
    Source("ch2bet.nii.gz", "colin27", "mricron-data", "BSD-3-clause (Debian copyright)",
           "Colin27 human T1 brain, skull stripped, 1 mm"),
    Source("anatomical.nii", "nibabel-anat", "nibabel", "MIT", "small human T1 brain, 33x41x25, 2 mm"),
    Source("inia19-t1-brain.nii.gz", "inia19", "mricron-data", "BSD-3-clause (Debian copyright)",
           "INIA19 macaque T1 brain template, 0.5 mm"),
)


def load_all(size: int, mricron: Path) -> list[torch.Tensor]:
    """Every source on the ``size``^3 working grid, ``(1, N, N, N)`` in [0, 1]."""
    paths = [s.path(mricron) for s in SOURCES]
    missing = [f"{s.name} ({s.package})" for s, p in zip(SOURCES, paths) if not p.is_file()]
    if missing:
        raise DRDMError(f"not installed: {', '.join(missing)}; pip install slicerio nibabel, "
                        f"apt-get install mricron-data")
    return [load_working_volume(p, size) for p in paths]


def axial_slices(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Slices along tensor axis 0 of ``(1, M, M, M)`` with content, area-averaged to ``(S, 1, size, size)``."""
    slices = volume[0].unsqueeze(1)
    keep = (slices > 0.05).flatten(1).float().mean(1) >= MIN_CONTENT
    return F.interpolate(slices[keep], size=(size, size), mode="area")


def source_list() -> list[dict]:
    return [{"file": s.name, "subject": s.subject, "package": s.package, "licence": s.licence,
             "description": s.description} for s in SOURCES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="3D cache file (.pt)")
    parser.add_argument("--size", type=int, default=64, help="working grid side N (default 64)")
    parser.add_argument("--hold-out", nargs="+", default=["inia19"], help="subjects held out (default inia19)")
    parser.add_argument("--slices2d", help="also write a 2D cache of axial slices here (.pt)")
    parser.add_argument("--slice-size", type=int, default=64)
    parser.add_argument("--slice-source-size", type=int, default=128)
    parser.add_argument("--mricron", default=str(MRICRON), help="folder of the mricron-data templates")
    args = parser.parse_args(argv)
    try:
        subjects = {s.subject for s in SOURCES}
        unknown = set(args.hold_out) - subjects
        if unknown:
            raise DRDMError(f"unknown subject(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(subjects))}")
        held = [s.subject in args.hold_out for s in SOURCES]
        volumes = load_all(args.size, Path(args.mricron))
        save_cache(args.out, torch.stack(volumes), [s.name for s in SOURCES], [s.subject for s in SOURCES], held,
                   source_list())
        print(f"{args.out}: {len(volumes)} volumes at {args.size}^3, held out: {', '.join(args.hold_out)}")
        if args.slices2d:
            big = volumes if args.slice_source_size == args.size else load_all(args.slice_source_size,
                                                                                Path(args.mricron))
            per_source = [axial_slices(v, args.slice_size) for v in big]
            names = [f"{s.name}#z{k}" for s, sl in zip(SOURCES, per_source) for k in range(len(sl))]
            subj = [s.subject for s, sl in zip(SOURCES, per_source) for _ in range(len(sl))]
            held2d = [s.subject in args.hold_out for s, sl in zip(SOURCES, per_source) for _ in range(len(sl))]
            save_cache(args.slices2d, torch.cat(per_source), names, subj, held2d, source_list())
            counts = ", ".join(f"{s.subject}/{s.name}: {len(sl)}" for s, sl in zip(SOURCES, per_source))
            print(f"{args.slices2d}: {len(names)} axial slices at {args.slice_size}^2 ({counts})")
    except DRDMError as exc:
        print(f"build_volume_cache: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
