"""Stand-in for ``python -m drdm_engine augment`` used by the tests: same command line, files and
progress lines, but a known analytic displacement field instead of the diffusion model.

Field (LPS mm): u(p) = amplitude * sin(2*pi*(p - centre) / period) per axis, phase shifted per sample;
image warped linearly, labels with nearest neighbour, both with ``out(x) = in(x + u(x))``.
Set ``DRDM_FAKE_SLEEP`` (seconds per sample) to make it slow for cancellation tests, and
``DRDM_FAKE_BAD_BYTES`` to print a line that is not UTF-8 before the progress lines.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicerio


def analyticField(reference: sitk.Image, index: int, amplitude: float = 2.5) -> sitk.Image:
    """Smooth displacement field on ``reference``'s grid, vectors in LPS mm (float64, 3 components)."""
    size = reference.GetSize()
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index_points = np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(float)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    points = index_points * reference.GetSpacing() @ direction.T + reference.GetOrigin()
    centre = points.mean(0)
    period = np.ptp(points, 0) + 1.0
    phase = 0.7 * index
    u = amplitude * np.sin(2 * np.pi * (points[:, [1, 2, 0]] - centre[[1, 2, 0]]) / period[[1, 2, 0]] + phase)
    field = sitk.GetImageFromArray(u.reshape(*size[::-1], 3), isVector=True)
    field.CopyInformation(reference)
    return field


def warp(image: sitk.Image, field: sitk.Image, interpolator: int) -> sitk.Image:
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))
    return sitk.Resample(image, image, transform, interpolator, 0.0, image.GetPixelID())


def fail(message: str) -> None:
    print(f"drdm: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("image")
    parser.add_argument("--labels")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model")
    parser.add_argument("--device")
    parser.add_argument("--progress-lines", action="store_true")
    args = parser.parse_args()
    image = sitk.ReadImage(args.image)
    array = sitk.GetArrayViewFromImage(image)
    if array.min() == array.max():
        fail(f"image {args.image} is constant ({float(array.min()):g} everywhere); nothing to deform")
    segmentation = slicerio.read_segmentation(args.labels) if args.labels else None
    out = Path(args.out)
    out.mkdir(parents=True)
    if os.environ.get("DRDM_FAKE_BAD_BYTES"):
        sys.stdout.flush()
        sys.stdout.buffer.write(b"caf\xe9 \xff\xfe not utf-8\n")
        sys.stdout.buffer.flush()
    samples = []
    for k in range(args.samples):
        time.sleep(float(os.environ.get("DRDM_FAKE_SLEEP", "0")))
        print(f"drdm-progress {k / args.samples:.3f} sample {k + 1} of {args.samples}", flush=True)
        field = analyticField(image, k)
        sitk.WriteImage(warp(image, field, sitk.sitkLinear), str(out / f"sample_{k}.nrrd"))
        sitk.WriteImage(sitk.Cast(field, sitk.sitkVectorFloat32), str(out / f"sample_{k}_field.nrrd"))
        labels = None
        if segmentation is not None:
            labelImage = sitk.ReadImage(args.labels)
            warped = sitk.GetArrayFromImage(warp(labelImage, field, sitk.sitkNearestNeighbor))
            written = dict(segmentation)
            written["voxels"] = np.ascontiguousarray(warped.transpose(2, 1, 0))
            written["segments"] = [{k2: v for k2, v in s.items() if k2 != "extent"} for s in segmentation["segments"]]
            written.pop("referenceImageExtentOffset", None)
            labels = f"sample_{k}_labels.seg.nrrd"
            slicerio.write_segmentation(str(out / labels), written)
        samples.append({"index": k, "id": f"sample_{k}", "images": [f"sample_{k}.nrrd"], "labels": labels,
                        "field": f"sample_{k}_field.nrrd", "preview": None,
                        "metrics": {"folding_fraction": 0.0, "displacement_mean_mm": 1.0,
                                    "displacement_p99_mm": 2.5, "dice": {}, "volume_change": {}}})
    print(f"drdm: fake worker wrote {args.samples} samples", file=sys.stderr, flush=True)
    (out / "manifest.json").write_text(json.dumps({"schema": "drdm-manifest", "schema_version": 2,
                                                   "mode": "diffusion-only", "settings": {"device": "cpu"},
                                                   "cases": [{"id": "input", "samples": samples}]}))
    print("drdm-progress 1.0 done", flush=True)


if __name__ == "__main__":
    main()
