"""The baseline of ``bench_augment.py``: a TorchIO script that does what ``drdm augment`` does in
diffusion-only mode for the bundled case: read the chest CT and its segmentation, deform both
``--samples`` times with a random smooth (B-spline) elastic field (image linear, labels nearest),
write each deformed image and label map (compressed NRRD, as ``drdm augment`` writes them).

    python bench/torchio_elastic.py --out FOLDER [--samples 3] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import SimpleITK as sitk
import slicerio
import torch
import torchio as tio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    subject = tio.Subject(image=tio.ScalarImage(slicerio.get_testdata_file("CTChest4.nrrd")),
                          labels=tio.LabelMap(slicerio.get_testdata_file("Segmentation.seg.nrrd")))
    elastic = tio.RandomElasticDeformation()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(1, args.samples + 1):
        deformed = elastic(subject)
        for key in ("image", "labels"):
            sitk.WriteImage(deformed[key].as_sitk(), str(out / f"sample_{k}_{key}.nrrd"), True)


if __name__ == "__main__":
    main()
