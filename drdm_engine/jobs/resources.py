"""Memory and disk a ``drdm augment`` run needs, estimated from the input headers before anything is
read, and the guard that refuses a run that would not fit (unless the user insists); the same for
``drdm train`` on the CPU."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import DRDMError

if TYPE_CHECKING:  # the training path checks memory without SimpleITK (io imports it)
    from ..io.read import ImageInfo

GIB = 2 ** 30
BASE_MEMORY = 800 * 2 ** 20  # the Python process with torch, SimpleITK and the slab scratch (calibrated)
WORKING_FIELD_COPIES = 3  # float32 copies of one sample's working-grid field alive while sampling (measured: 2)
PER_VOXEL_FLOATS = 1.5  # float32 copies of the input per voxel besides the input and output arrays
NETWORK_FLOATS = 48  # float32 activations per working voxel and sample of the recovery network
TRAINING_FLOATS = 2000  # float32 per working voxel and batch sample while training on the CPU: the activations
# kept for the backward pass (measured 1600-1800 in 3D at 32^3-64^3, 1900-2000 in 2D at 256^2)


@dataclass(frozen=True)
class Needs:
    """Estimated peak memory and disk (bytes) of a run, and the part of each that grows per sample."""

    memory: int
    disk: int
    memory_per_sample: int
    disk_per_sample: int


def estimate(image: ImageInfo, labels: ImageInfo | None, samples: int, working_size: int,
             field_compression: int, network: bool = False) -> Needs:
    """Peak memory and disk of a run: the input, its output and (with labels) the label maps in and
    out at full size; the float working copy; all samples' fields on the working grid (``nd`` float32
    per voxel, several copies while sampling; with a recovery ``network``, its activations); per
    sample on disk the image, the labels and the
    field (uncompressed size when ``field_compression`` is 0, else 90 % of it: fields compress little)."""
    voxels = image.voxels
    nd = image.ndims
    label_bytes = 0
    if labels is not None:  # the file's type in and out, and the warp's tensors (uint8, else up to int64)
        label_bytes = 2 * labels.bytes_per_voxel + 2 * (1 if labels.bytes_per_voxel == 1 else 8)
    full_size = voxels * (2 * image.bytes_per_voxel + 4 * PER_VOXEL_FLOATS + label_bytes)
    per_sample = working_size ** nd * 4 * (nd * WORKING_FIELD_COPIES + (NETWORK_FLOATS if network else 0))
    field = voxels * nd * 4 * (1.0 if field_compression == 0 else 0.9)
    disk_per_sample = int(voxels * (image.bytes_per_voxel + (labels.bytes_per_voxel if labels else 0)) + field)
    return Needs(int(BASE_MEMORY + full_size + samples * per_sample), samples * disk_per_sample, per_sample,
                 disk_per_sample)


def check_training_memory(ndims: int, size: int, batch: int, processes: int = 1, memory: int | None = None) -> None:
    """Refuse CPU training whose estimated memory (``processes`` processes on this machine, each with
    ``batch`` samples of ``size^ndims``) exceeds what is available, with one line saying how to fit."""
    per_sample = size ** ndims * 4 * TRAINING_FLOATS
    needed = processes * (BASE_MEMORY + batch * per_sample)
    memory = available_memory() if memory is None else memory
    if memory is None or needed <= memory:
        return
    fit = (memory // processes - BASE_MEMORY) // per_sample
    hint = f"use --batch-size {fit} or less, a smaller --size" if fit >= 1 else "use a smaller --size"
    raise DRDMError(f"training at {size}^{ndims} with batch {batch} needs about {_gib(needed)} of memory on the "
                    f"CPU and {_gib(memory)} is available; {hint} or a GPU (--device cuda), or add "
                    f"--force-large to run anyway")


def available_memory() -> int | None:
    """Bytes of memory this process may still use: ``MemAvailable``, capped by a cgroup limit (Linux);
    ``None`` where unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def free_disk(out: Path) -> int:
    """Free bytes on the file system that will hold ``out`` (its nearest existing ancestor)."""
    folder = out.absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def check(needs: Needs, out: Path, samples: int, memory: int | None = None, disk: int | None = None) -> None:
    """Refuse a run whose estimated memory or disk exceeds what is available, with one line saying how
    much is needed and how to reduce it (``memory``/``disk``: available bytes, measured when ``None``)."""
    memory = available_memory() if memory is None else memory
    disk = free_disk(out) if disk is None else disk
    if memory is not None and needs.memory > memory:
        fit = max(0, (memory - (needs.memory - samples * needs.memory_per_sample)) // max(1, needs.memory_per_sample))
        hint = f"use at most {fit} --samples or a smaller --size" if fit >= 1 else "use a smaller image or --size"
        raise DRDMError(f"this run needs about {_gib(needs.memory)} of memory and {_gib(memory)} is available; "
                        f"{hint}, or add --force-large to run anyway")
    if needs.disk > disk:
        fit = disk // max(1, needs.disk_per_sample)
        hint = f"use at most {fit} --samples" if fit >= 1 else "free some space"
        raise DRDMError(f"this run writes about {_gib(needs.disk)} and {out} has {_gib(disk)} free; {hint}, "
                        f"choose another --out, or add --force-large to run anyway")
