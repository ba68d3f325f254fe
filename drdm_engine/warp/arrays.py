"""DRDM deformation of arrays in memory, for training pipelines (MONAI, TorchIO).

A case is a list of image arrays ``(C, *spatial)`` and label arrays ``(1, *spatial)`` on one grid
with ``spacing`` (mm per spatial axis, in the arrays' axis order). Its field is drawn by
:func:`.working.sample_working` from channel 0 of the first image and applied to every channel (linear)
and every label map (label-safe). Fields are cached per ``(case, seed, depth)``; a *bank* draws ``K``
(seed, depth) pairs once per case and afterwards only picks one of them, so a case's later
samples cost only the warp. Fields stay cached in a least-recently-used store of ``cached_fields``
fields (per process, so per DataLoader worker): a bank only saves time when it holds every banked
field of the cases in rotation, ``cases x K <= cached_fields``.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
import torch

from ..core.device import resolve_device
from ..core.labels import LabelWarper, compact_labels
from ..core.limits import check_sampling
from ..core.pairs import resampling_field
from ..model.loading import ModelCache
from .slabs import InputField, warp_slabs
from .working import check_depth, sample_working, schedule_of

CACHED_FIELDS = 64  # each is 12 N^3 bytes: 25 MB at a working size of 128, 3 MB at 64
BANKED_CASES = 1 << 16


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


def warp_arrays(sources: list[np.ndarray], labels: list[np.ndarray],
                field: InputField) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Warp spatial arrays (array order, the grid of ``field.grid.input``) with one field in one pass:
    ``sources`` linearly (each in its own dtype, integers rounded and clipped), ``labels`` label-safely."""
    warped = warp_slabs(field, sources, [LabelWarper(compact_labels(l)) for l in labels])
    return warped.sources, [w.numpy().astype(l.dtype) for w, l in zip(warped.labels, labels)]


class Deformer:
    """Draws, caches and applies DRDM fields for one setting (model, working size, recovery, precision)."""

    def __init__(self, model: str = "none", size: int | None = None, recovery: str = "from-depth",
                 precision: str = "auto", device: str = "cpu", cached_fields: int = CACHED_FIELDS):
        check_sampling(1, 0, size)
        self.size, self.recovery, self.precision = size, recovery, precision
        self.device = resolve_device(device)
        self.models = ModelCache(model, self.device)
        self.cached_fields = cached_fields
        self.fields: OrderedDict[tuple[str, int, int], InputField] = OrderedDict()
        self.banks: OrderedDict[str, list[tuple[int, int]]] = OrderedDict()

    def model(self, ndims: int):
        """The model for ``ndims``-D cases (``None``: diffusion only)."""
        return self.models.get(ndims)

    def key(self, reference: np.ndarray, spacing: tuple[float, ...]) -> str:
        """Cache key of a case's fields: its content with a model (fields depend on the image), else its
        grid only (diffusion-only fields do not), so an inverse can be found from the deformed case."""
        return case_key(reference, spacing, content=self.model(reference.ndim) is not None)

    def bank(self, reference: np.ndarray, spacing: tuple[float, ...], size: int, draw) -> list[tuple[int, int]]:
        """The case's ``size`` (seed, depth) pairs, drawn once with ``draw()``."""
        key = case_key(reference, spacing)
        if key not in self.banks:
            self.banks[key] = [draw() for _ in range(size)]
            _trim(self.banks, BANKED_CASES)
        self.banks.move_to_end(key)
        return self.banks[key]

    def field(self, reference: np.ndarray, spacing: tuple[float, ...], seed: int, depth: int,
              key: str | None = None) -> InputField:
        """The field of ``(case, seed, depth)``, drawn from ``reference`` (one spatial array) at first use."""
        given = key is not None
        key = key if given else self.key(reference, spacing)
        entry = (key, int(seed), int(depth))
        if entry not in self.fields:
            model = self.model(reference.ndim)
            if given and model is not None and case_key(reference, spacing) != key:
                raise RuntimeError("the field of this DRDM deformation is not cached in this process and depends on "
                                   "the undeformed image (a model is used); invert it where it was applied")
            check_depth(depth, schedule_of(model))
            image = _image(reference.astype(np.float32, copy=False), spacing)
            working, grid = sample_working(image, model, 1, depth, seed, self.device, self.recovery, self.size,
                                           self.precision)
            self.fields[entry] = InputField(working, grid)
            _trim(self.fields, self.cached_fields)
        self.fields.move_to_end(entry)
        return self.fields[entry]

    def inverse(self, field: InputField) -> InputField:
        """The numerically inverted field (fixed-point iteration, :func:`..core.pairs.resampling_field`)."""
        with torch.inference_mode():
            inverse = resampling_field(field.working, torch.zeros_like(field.working))
        return InputField(inverse, field.grid)

    @staticmethod
    def apply(field: InputField, images: list[np.ndarray],
              labels: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Warp every channel of ``images`` ``(C, *spatial)`` (linear, own dtype) and ``labels``
        ``(1, *spatial)`` (label-safe) with ``field``."""
        channels = [c for image in images for c in image]
        warped, warped_labels = warp_arrays(channels, [label[0] for label in labels], field)
        out, start = [], 0
        for image in images:
            out.append(np.stack(warped[start:start + len(image)]))
            start += len(image)
        return out, [w[None] for w in warped_labels]


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
