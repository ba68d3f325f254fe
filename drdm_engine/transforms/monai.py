"""MONAI dictionary transform ``RandDRDMd``: a random DRDM deformation of image and label keys.

Images (``keys``) are warped linearly channel by channel and label maps (``label_keys``) label-safely,
all with the same field; MetaTensor affine and metadata are kept (the grid does not change). The
random draws come from the transform's ``R`` (``set_determinism``, ``Compose.set_random_state`` and
MONAI's ``DataLoader`` workers seed it); the field itself from a ``torch.Generator`` seeded by that draw.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type

from ..warp.arrays import deformer, spacing_of_affine

SEEDS = 2 ** 31 - 1


class RandDRDMd(RandomizableTransform, MapTransform):
    """Random DRDM deformation of ``keys`` (images, ``(C, *spatial)``) and ``label_keys`` (label maps).

    ``depth``: diffusion depth ``T0`` or an inclusive range drawn uniformly per call; ``model``: checkpoint
    path, ``"default"`` or ``"none"`` (diffusion only); ``size``: working grid side without a model;
    ``bank``: ``K > 0`` draws ``K`` fields once per case and then picks one of them per call (only the
    warp is paid after the first ``K`` calls of a case).
    """

    def __init__(self, keys: KeysCollection, label_keys: KeysCollection = (), prob: float = 1.0,
                 depth: int | Sequence[int] = (20, 40), model: str = "none", size: int | None = None,
                 recovery: str = "from-depth", precision: str = "auto", device: str = "cpu", bank: int = 0,
                 allow_missing_keys: bool = False):
        image_keys = [keys] if isinstance(keys, str) else list(keys)
        labels = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        MapTransform.__init__(self, image_keys + labels, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.image_keys, self.label_keys = image_keys, labels
        self.depth = (int(depth), int(depth)) if np.isscalar(depth) else (int(depth[0]), int(depth[1]))
        self.settings = (model, size, recovery, precision, device)
        self.bank_size = int(bank)
        self._draw: tuple[int, int] | None = None

    def _seed_and_depth(self) -> tuple[int, int]:
        return int(self.R.randint(SEEDS)), int(self.R.randint(self.depth[0], self.depth[1] + 1))

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._draw = self._seed_and_depth()
            self._pick = int(self.R.randint(max(1, self.bank_size)))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        present = set(self.key_iterator(d))  # MONAI's KeyError for a missing key unless allow_missing_keys
        if not present:
            return d
        self.randomize()
        if not self._do_transform:
            return d
        images = [k for k in self.image_keys if k in present]
        labels = [k for k in self.label_keys if k in present]
        first = d[images[0] if images else labels[0]]
        arrays = {k: np.asarray(d[k].detach().cpu() if isinstance(d[k], torch.Tensor) else d[k]) for k in images + labels}
        ndims = arrays[images[0] if images else labels[0]].ndim - 1
        affine = getattr(first, "affine", None)
        spacing = spacing_of_affine(affine, ndims) if affine is not None else (1.0,) * ndims
        engine = deformer(*self.settings)
        reference = arrays[images[0] if images else labels[0]][0]
        seed, depth = self._draw
        if self.bank_size > 0:
            seed, depth = engine.bank(reference, spacing, self.bank_size, self._seed_and_depth)[self._pick]
        field = engine.field(reference, spacing, seed, depth)
        warped_images, warped_labels = engine.apply(field, [arrays[k] for k in images], [arrays[k] for k in labels])
        for key, array in zip(images + labels, warped_images + warped_labels):
            d[key] = convert_to_dst_type(torch.from_numpy(np.ascontiguousarray(array)), dst=d[key])[0]
        return d
