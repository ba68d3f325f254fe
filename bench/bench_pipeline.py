"""Per-sample cost of DRDM in a training pipeline (image + label map, 128³) against the peers' elastic
deformations, measured round-robin in one run: MONAI ``RandDRDMd`` and TorchIO ``RandomDRDM`` with and
without a field bank, TorchIO ``RandomElasticDeformation``, MONAI ``Rand3DElasticd``.

    PYTHONPATH=.:bench OMP_WAIT_POLICY=PASSIVE python bench/bench_pipeline.py [--size 128] [--repeats 5] [--bank 8]

Diffusion-only DRDM fields (no trained model is bundled), working grid 128, depth drawn in 20…40.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import machine, measure, row


def volume(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random volume ``(1, S, S, S)`` (CT-like range) and a 3-label map of it (uint8)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand((1, 1, 8, 8, 8), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=False)[0]
    labels = (image * 3).clamp(0, 2).to(torch.uint8)
    return image * 1000 - 500, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bank", type=int, default=8)
    args = parser.parse_args()

    import torchio as tio
    from monai.data import MetaTensor
    from monai.transforms import Rand3DElasticd

    from drdm_engine.transforms.monai import RandDRDMd
    from drdm_engine.transforms.torchio import RandomDRDM

    image, labels = volume(args.size)
    affine = torch.eye(4, dtype=torch.float64)
    data = {"image": MetaTensor(image, affine=affine), "label": MetaTensor(labels.float(), affine=affine)}
    subject = tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=labels))
    settings = {"depth": (20, 40), "size": 128}
    monai_drdm = RandDRDMd(keys="image", label_keys="label", **settings)
    monai_bank = RandDRDMd(keys="image", label_keys="label", bank=args.bank, **settings)
    torchio_drdm = RandomDRDM(**settings)
    torchio_bank = RandomDRDM(bank=args.bank, **settings)
    for transform in (monai_drdm, monai_bank):
        transform.set_random_state(0)
    torch.manual_seed(0)
    peers_monai = Rand3DElasticd(keys=["image", "label"], sigma_range=(5, 8), magnitude_range=(100, 200), prob=1.0,
                                 mode=("bilinear", "nearest"), padding_mode="border")
    peers_monai.set_random_state(0)
    peers_torchio = tio.RandomElasticDeformation()
    for _ in range(3 * args.bank):  # fill the banks: afterwards a bank call only warps
        monai_bank(data)
        torchio_bank(subject)
    works = {
        "MONAI Rand3DElasticd (image + label)": lambda: peers_monai(data),
        "TorchIO RandomElasticDeformation (image + label)": lambda: peers_torchio(subject),
        "DRDM RandDRDMd, new field each call": lambda: monai_drdm(data),
        f"DRDM RandDRDMd, bank K={args.bank} (warm)": lambda: monai_bank(data),
        "DRDM RandomDRDM (TorchIO), new field each call": lambda: torchio_drdm(subject),
        f"DRDM RandomDRDM (TorchIO), bank K={args.bank} (warm)": lambda: torchio_bank(subject),
    }
    print(f"# per-sample pipeline cost at {args.size}^3, {args.repeats} round-robin repeats; {machine()}")
    times = measure(works, args.repeats)
    monai_peer = times["MONAI Rand3DElasticd (image + label)"][0]
    torchio_peer = times["TorchIO RandomElasticDeformation (image + label)"][0]
    for label, (seconds, spread) in times.items():
        print(row(label, seconds, spread, monai_peer) + f"  x{torchio_peer / seconds:6.2f} vs TorchIO")
    print(f"# ratios: xR = peer seconds / these seconds (> 1: faster than the peer); load after: {machine()}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
