"""Process group for DistributedDataParallel: read torchrun's environment, NCCL on GPUs, gloo on CPUs."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.device import launched_by_torchrun


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, value: object) -> list[object]:
        """Every rank's ``value`` in rank order (just ``[value]`` in a single process)."""
        if not self.distributed:
            return [value]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def start(device: torch.device) -> ProcessGroup:
    """Join the process group described by torchrun's environment (backend from ``device``)."""
    if not launched_by_torchrun():
        return ProcessGroup()
    group = ProcessGroup(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if group.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return group


def stop() -> None:
    """Leave the process group (no-op when none was started)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
