"""DRDM deformation of arrays in memory, for training pipelines (MONAI, TorchIO).

A case is a list of image arrays ``(C, *spatial)`` and label arrays ``(1, *spatial)`` on one grid
with ``spacing`` (mm per spatial axis, in the arrays' axis order). Its field is drawn by
:func:`augment.generate` from channel 0 of the first image and applied to every channel (linear)
and every label map (label-safe). Fields are cached per ``(case, seed, depth)``; a *bank* draws ``K``
(seed, depth) pairs once per case and afterwards only picks one of them, so a case's later
samples cost only the warp.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
import torch

from .augment import _apply, generate, resolve_device, resolve_model
from .io import Labels
from .pairs import between

CACHED_CASES = 16


def _image(array: np.ndarray, spacing: tuple[float, ...]) -> sitk.Image:
    """SimpleITK image of one spatial array (axis order kept: SimpleITK's x is the array's last axis)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    return image


def case_key(array: np.ndarray, spacing: tuple[float, ...], content: bool = True) -> str:
    """Identity of a case: BLAKE2 of its voxels (``content``) or only of its shape and spacing."""
    digest = hashlib.blake2b(repr((array.shape, str(array.dtype), tuple(round(float(s), 6) for s in spacing))).encode(),
                             digest_size=16)
    if content:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Field:
    """A working-grid field ``(1, nd, N^nd)`` (voxels) and the grid it maps onto the case."""

    working: torch.Tensor
    grid: object


class Deformer:
    """Draws, caches and applies DRDM fields for one setting (model, working size, recovery, precision)."""

    def __init__(self, model: str = "none", size: int | None = None, recovery: str = "from-depth",
                 precision: str = "auto", device: str = "cpu", cached_cases: int = CACHED_CASES):
        self.model_name, self.size, self.recovery, self.precision = model, size, recovery, precision
        self.device = resolve_device(device)
        self.models: dict[int, object] = {}
        self.cached_cases = cached_cases
        self.fields: OrderedDict[str, dict] = OrderedDict()
        self.banks: OrderedDict[str, list[tuple[int, int]]] = OrderedDict()

    def model(self, ndims: int):
        if ndims not in self.models:
            self.models[ndims] = resolve_model(self.model_name, ndims, self.device)
        return self.models[ndims]

    def key(self, reference: np.ndarray, spacing: tuple[float, ...]) -> str:
        """Cache key of a case's fields: its content with a model (fields depend on the image), else its
        grid only (diffusion-only fields do not), so an inverse can be found from the deformed case."""
        return case_key(reference, spacing, content=self.model(reference.ndim) is not None)

    def bank(self, reference: np.ndarray, spacing: tuple[float, ...], size: int, draw) -> list[tuple[int, int]]:
        """The case's ``size`` (seed, depth) pairs, drawn once with ``draw()`` (LRU over cases)."""
        key = case_key(reference, spacing)
        if key not in self.banks:
            self.banks[key] = [draw() for _ in range(size)]
            _trim(self.banks, self.cached_cases)
        self.banks.move_to_end(key)
        return self.banks[key]

    def field(self, reference: np.ndarray, spacing: tuple[float, ...], seed: int, depth: int,
              key: str | None = None) -> Field:
        """The field of ``(case, seed, depth)``, drawn from ``reference`` (one spatial array) at first use."""
        key = key or self.key(reference, spacing)
        fields = self.fields.setdefault(key, {})
        self.fields.move_to_end(key)
        if (seed, depth) not in fields:
            model = self.model(reference.ndim)
            if model is not None and case_key(reference, spacing) != key:
                raise RuntimeError("the field of this DRDM deformation is not cached in this process and depends on "
                                   "the undeformed image (a model is used); invert it where it was applied")
            image = _image(reference.astype(np.float32, copy=False), spacing)
            sample = next(generate(image, None, model, 1, depth, seed, self.device, self.recovery, self.size,
                                   precision=self.precision))
            fields[(seed, depth)] = Field(sample.field.working, sample.field.grid)
            _trim(self.fields, self.cached_cases)
        return fields[(seed, depth)]

    def inverse(self, field: Field) -> Field:
        """The numerically inverted field (fixed-point iteration, :func:`pairs.between`)."""
        with torch.inference_mode():
            inverse, _ = between(field.working, torch.zeros_like(field.working))
        return Field(inverse, field.grid)

    def apply(self, field: Field, images: list[np.ndarray], labels: list[np.ndarray],
              spacing: tuple[float, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Warp every channel of ``images`` (linear, own dtype) and ``labels`` (label-safe) with ``field``."""
        out_images = [np.stack([self._warp(c, None, field, spacing)[0] for c in image]) for image in images]
        reference = images[0][0] if images else labels[0][0]
        out_labels = [self._warp(reference, label[0], field, spacing)[1][None] for label in labels]
        return out_images, out_labels

    def _warp(self, channel: np.ndarray, label: np.ndarray | None, field: Field, spacing) -> tuple[np.ndarray, np.ndarray | None]:
        image = _image(channel, spacing)
        labels = None
        label_tensor = None
        if label is not None:
            values = label.astype(np.uint8 if label.min() >= 0 and label.max() <= 255 else np.int32)
            labels = Labels(_image(values, spacing))
            label_tensor = torch.from_numpy(values.copy())
        with torch.inference_mode():
            case = _apply(sitk.GetArrayViewFromImage(image), label_tensor, field.working, field.grid, image, labels)
        out_labels = None if case.labels is None else sitk.GetArrayFromImage(case.labels).astype(label.dtype)
        return sitk.GetArrayFromImage(case.image), out_labels


def _trim(cache: OrderedDict, size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)


@lru_cache(maxsize=8)
def deformer(model: str = "none", size: int | None = None, recovery: str = "from-depth", precision: str = "auto",
             device: str = "cpu") -> Deformer:
    """The shared :class:`Deformer` of one setting in this process (transforms rebuilt from a history
    find the fields their random parent drew)."""
    return Deformer(model, size, recovery, precision, device)


def spacing_of_affine(affine, ndims: int) -> tuple[float, ...]:
    """Voxel spacing (mm) per spatial axis from a voxel-to-world affine (column norms)."""
    matrix = np.asarray(affine, dtype=np.float64)[:ndims, :ndims]
    return tuple(float(s) for s in np.linalg.norm(matrix, axis=0))
