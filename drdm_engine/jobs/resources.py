"""Memory and disk a ``drdm augment`` run needs, estimated from the input headers before anything is
read, and the guard that refuses a run that would not fit (unless the user insists); the same for
``drdm train`` and ``drdm evaluate`` on the CPU, before any volume is loaded."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..core.errors import DRDMError
from ..io.formats import nearest_existing

if TYPE_CHECKING:  # the training path checks memory without SimpleITK (io imports it)
    from ..io.read import ImageInfo

GIB = 2 ** 30
BASE_MEMORY = 800 * 2 ** 20  # the Python process with torch, SimpleITK and the slab scratch (calibrated)
WORKING_FIELD_COPIES = 3  # float32 copies of one sample's working-grid field alive while sampling (measured: 2)
PER_VOXEL_FLOATS = 1.5  # float32 copies of the input per voxel besides the input and output arrays
NETWORK_FLOATS = 48  # float32 activations per working voxel and sample of the recovery network
TRAINING_FLOATS = 2000  # float32 per working voxel and batch sample while training on the CPU: the activations
# kept for the backward pass (measured 1600-1800 in 3D at 32^3-64^3, 1900-2000 in 2D at 256^2)
EVALUATION_FLOATS = 130  # float32 per working voxel while scoring one deformation on the CPU: fields, network
# activations and metrics (measured 104-112 in 3D at 96^3-128^3, 125 in 2D at 1024^2)


@dataclass(frozen=True)
class Needs:
    """Estimated peak memory and disk (bytes) of a run, and the part of each that grows per sample."""

    memory: int
    disk: int
    memory_per_sample: int
    disk_per_sample: int


def estimate(image: ImageInfo, labels: ImageInfo | None, samples: int, working_size: int,
             field_compression: int, network: bool = False, channels: Sequence[ImageInfo] = ()) -> Needs:
    """Peak memory and disk of one case: the input, its output and (with labels) the label maps in and
    out at full size, the same for other ``channels`` on its grid; the float working copy; all samples'
    fields on the working grid (``nd`` float32 per voxel, several copies while sampling; with a
    recovery ``network``, its activations); on disk the inputs once uncompressed (a ``.nii.gz`` is read
    through a temporary copy) and per sample the images, the labels and the field (uncompressed size
    when ``field_compression`` is 0, else 90 % of it: fields compress little)."""
    voxels = image.voxels
    nd = image.ndims
    label_bytes = 0
    if labels is not None:  # the file's type in and out, and the warp's tensors (uint8, else up to int64)
        label_bytes = 2 * labels.bytes_per_voxel + 2 * (1 if labels.bytes_per_voxel == 1 else 8)
    channel_bytes = sum(c.bytes_per_voxel for c in channels)
    full_size = voxels * (2 * (image.bytes_per_voxel + channel_bytes) + 4 * PER_VOXEL_FLOATS + label_bytes)
    per_sample = working_size ** nd * 4 * (nd * WORKING_FIELD_COPIES + (NETWORK_FLOATS if network else 0))
    field = voxels * nd * 4 * (1.0 if field_compression == 0 else 0.9)
    stored = image.bytes_per_voxel + channel_bytes + (labels.bytes_per_voxel if labels else 0)
    disk_per_sample = int(voxels * stored + field)
    scratch = voxels * stored  # a compressed NIfTI input decompressed for its read, beside the outputs
    return Needs(int(BASE_MEMORY + full_size + samples * per_sample), scratch + samples * disk_per_sample,
                 per_sample, disk_per_sample)


def combine(cases: Sequence[Needs], processes: int = 1) -> Needs:
    """The needs of a run over ``cases`` done ``processes`` at a time: the memory of the largest case in
    each process at once, the disk of all cases."""
    largest = max(cases, key=lambda n: n.memory)
    return Needs(processes * largest.memory, sum(n.disk for n in cases), processes * largest.memory_per_sample,
                 sum(n.disk_per_sample for n in cases))


def out_of_memory(exc: BaseException) -> str | None:
    """The one line for an allocation that failed (``MemoryError``, or PyTorch's allocator reporting that
    it cannot allocate), ``None`` for any other error."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not (isinstance(exc, MemoryError) or "allocate" in text.lower() or "out of memory" in text.lower()):
        return None
    return (f"not enough memory ({text[:100]}); use a smaller --size, fewer --samples or --workers, or a machine "
            f"with more memory")


def _working_bytes(ndims: int, size: int, floats: float) -> int:
    """Bytes of ``floats`` float32 values per voxel of the ``size^ndims`` working grid."""
    return int(size ** ndims * 4 * floats)


def _shortage(needed: int, memory: int | None) -> int | None:
    """The available memory (``memory``, measured when ``None``) when ``needed`` bytes exceed it, else ``None``."""
    memory = available_memory() if memory is None else memory
    return memory if memory is not None and needed > memory else None


def _cpu_memory_error(run: str, needed: int, memory: int, hint: str) -> DRDMError:
    """The one line refusing a CPU ``run`` that needs ``needed`` bytes where ``memory`` are available."""
    return DRDMError(f"{run} needs about {amount(needed)} of memory on the CPU and {amount(memory)} is available; "
                     f"{hint} or a GPU (--device cuda), or add --force-large to run anyway")


def check_training_memory(ndims: int, size: int, batch: int, processes: int = 1, memory: int | None = None) -> None:
    """Refuse CPU training whose estimated memory (``processes`` processes on this machine, each with
    ``batch`` samples of ``size^ndims``) exceeds what is available, with one line saying how to fit."""
    per_sample = _working_bytes(ndims, size, TRAINING_FLOATS)
    needed = processes * (BASE_MEMORY + batch * per_sample)
    memory = _shortage(needed, memory)
    if memory is None:
        return
    fit = (memory // processes - BASE_MEMORY) // per_sample
    hint = f"use --batch-size {fit} or less, a smaller --size" if fit >= 1 else "use a smaller --size"
    raise _cpu_memory_error(f"training at {size}^{ndims} with batch {batch}", needed, memory, hint)


def check_evaluation_memory(ndims: int, size: int, volumes: int, memory: int | None = None) -> None:
    """Refuse a CPU evaluation whose estimated memory (``volumes`` volumes held on the ``size^ndims`` working
    grid, one deformation scored at a time) exceeds what is available, with one line saying how to fit."""
    per_volume = _working_bytes(ndims, size, 1)
    scoring = BASE_MEMORY + _working_bytes(ndims, size, EVALUATION_FLOATS)
    needed = scoring + volumes * per_volume
    memory = _shortage(needed, memory)
    if memory is None:
        return
    fit = (memory - scoring) // per_volume
    hint = f"evaluate {fit} volumes or fewer at a time, a smaller --size" if fit >= 1 else "use a smaller --size"
    raise _cpu_memory_error(f"evaluating {volumes} volume(s) at {size}^{ndims}", needed, memory, hint)


def available_memory() -> int | None:
    """Bytes of memory this process may still use: ``MemAvailable``, capped by a cgroup limit and by an
    address-space limit (``ulimit -v``) less what the process has mapped (Linux); ``None`` where unknown."""
    found = []
    limit = _address_space_left()
    if limit is not None:
        found.append(limit)
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


def _address_space_left() -> int | None:
    """Bytes an address-space limit (``RLIMIT_AS``) still allows this process to map; ``None`` without one."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        status = Path("/proc/self/status").read_text()
        mapped = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration, ValueError):
        return None
    return max(0, soft - mapped)


def free_disk(out: Path) -> int:
    """Free bytes on the file system that will hold ``out`` (its nearest existing ancestor)."""
    return shutil.disk_usage(nearest_existing(out)).free


def amount(n: float) -> str:
    """Bytes for a message: GiB from 1 GiB, else MiB (a small run does not read "0.0 GiB")."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2 ** 20:.1f} MiB"


def check(needs: Needs, out: Path, samples: int, memory: int | None = None, disk: int | None = None,
          processes: int = 1) -> None:
    """Refuse a run whose estimated memory or disk exceeds what is available, with one line saying how
    much is needed and how to reduce it (``memory``/``disk``: available bytes, measured when ``None``;
    ``processes``: worker processes sharing the memory)."""
    memory = available_memory() if memory is None else memory
    disk = free_disk(out) if disk is None else disk
    if memory is not None and needs.memory > memory:
        fit = max(0, (memory - (needs.memory - samples * needs.memory_per_sample)) // max(1, needs.memory_per_sample))
        hint = f"use at most {fit} --samples or a smaller --size" if fit >= 1 else "use a smaller image or --size"
        if processes > 1:
            hint = f"use fewer --workers, or {hint[4:]}"
        raise DRDMError(f"this run needs about {amount(needs.memory)} of memory and {amount(memory)} is available; "
                        f"{hint}, or add --force-large to run anyway")
    if needs.disk > disk:
        fit = disk // max(1, needs.disk_per_sample)
        hint = f"use at most {fit} --samples" if fit >= 1 else "free some space"
        raise DRDMError(f"this run writes about {amount(needs.disk)} and {out} has {amount(disk)} free; {hint}, "
                        f"choose another --out, or add --force-large to run anyway")
