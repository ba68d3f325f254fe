"""TorchIO transforms: ``RandomDRDM`` (random) and ``DRDMDeformation`` (its reproducible, invertible
deterministic form, recorded in the subject's history like TorchIO's own spatial transforms).

``ScalarImage``s are warped linearly channel by channel and ``LabelMap``s label-safely, all with the same
field, drawn from the first scalar image. The grid (shape, affine) is kept. ``inverse()`` warps with
the numerically inverted field (fixed-point iteration; see :mod:`drdm_engine.core.pairs`).
"""
from __future__ import annotations

import numpy as np
import torch
import torchio as tio
from torchio.transforms.augmentation import RandomTransform
from torchio.transforms.spatial_transform import SpatialTransform

from ..warp.arrays import deformer

SEEDS = 2 ** 31 - 1


def _reference(subject: tio.Subject) -> tio.Image:
    scalars = subject.get_images(intensity_only=True)
    return scalars[0] if scalars else subject.get_images(intensity_only=False)[0]


class DRDMDeformation(SpatialTransform):
    """DRDM deformation with the field of ``(case, seed, depth)``; ``case`` is the key of the undeformed
    case (set by :class:`RandomDRDM`, so that the inverse finds the field from the deformed subject)."""

    def __init__(self, seed: int, depth: int, model: str = "none", size: int | None = None,
                 recovery: str = "from-depth", precision: str = "auto", device: str = "cpu", case: str | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.seed, self.depth, self.model, self.size = int(seed), int(depth), model, size
        self.recovery, self.precision, self.device, self.case = recovery, precision, device, case
        self.invert_transform = False
        self.args_names = ["seed", "depth", "model", "size", "recovery", "precision", "device", "case"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        engine = deformer(self.model, self.size, self.recovery, self.precision, self.device)
        reference = _reference(subject)
        spacing = tuple(float(s) for s in reference.spacing)
        array = reference.data[0].numpy()
        field = engine.field(array, spacing, self.seed, self.depth, self.case)
        if self.invert_transform:
            field = engine.inverse(field)
        images = [i for i in self.get_images(subject) if not isinstance(i, tio.LabelMap)]
        labels = [i for i in self.get_images(subject) if isinstance(i, tio.LabelMap)]
        warped_images, warped_labels = engine.apply(field, [i.data.numpy() for i in images],
                                                    [i.data.numpy() for i in labels])
        for image, array in zip(images + labels, warped_images + warped_labels):
            image.set_data(torch.from_numpy(np.ascontiguousarray(array)).to(image.data.dtype))
        return subject


class RandomDRDM(RandomTransform, SpatialTransform):
    """Random DRDM deformation of a ``Subject``.

    ``depth``: diffusion depth ``T0`` or an inclusive range drawn per call; ``model``: checkpoint path,
    ``"default"`` or ``"none"`` (diffusion only); ``size``: working grid side without a model; ``bank``:
    ``K > 0`` draws ``K`` (seed, depth) pairs once per case and picks one per call. Draws use PyTorch's
    global generator, as TorchIO's own random transforms (``torch.manual_seed`` reproduces them).
    """

    def __init__(self, depth: int | tuple[int, int] = (20, 40), model: str = "none", size: int | None = None,
                 recovery: str = "from-depth", precision: str = "auto", device: str = "cpu", bank: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.depth = (int(depth), int(depth)) if np.isscalar(depth) else (int(depth[0]), int(depth[1]))
        self.settings = {"model": model, "size": size, "recovery": recovery, "precision": precision, "device": device}
        self.bank = int(bank)

    def _draw(self) -> tuple[int, int]:
        return int(torch.randint(SEEDS, (1,))), int(torch.randint(self.depth[0], self.depth[1] + 1, (1,)))

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        subject.check_consistent_spatial_shape()
        engine = deformer(*self.settings.values())
        reference = _reference(subject)
        array, spacing = reference.data[0].numpy(), tuple(float(s) for s in reference.spacing)
        seed, depth = self._draw()
        if self.bank > 0:
            seed, depth = engine.bank(array, spacing, self.bank, self._draw)[int(torch.randint(self.bank, (1,)))]
        transform = DRDMDeformation(seed, depth, case=engine.key(array, spacing), **self.settings,
                                    **self._get_base_args())
        return transform(subject)
