"""The training log: one CSV row every K steps with the mean loss terms of those steps.

Each step's loss terms are summed on the device that computed them and read on the host once per row:
a host read of a GPU value waits until the GPU has finished all work queued before it, so a read per
step would stall the queue of kernel launches at every step. A row's samples/s is timed from one such
read to the next, so it measures the GPU's work, not only how fast the kernels were launched.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .losses import TERM_NAMES, LossTerms

LOG_COLUMNS = ("step", "t_mean", *TERM_NAMES, "lr", "samples_per_s", "skipped")


class CsvLog:
    """Append rows to a CSV file, writing the header when the file is new. A file that exists keeps its
    own header (a run resumed from a log with other columns): values of other columns are left out."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path, self.columns = path, list(columns)
        self.header: list[str] | None = None

    def write(self, row: dict) -> None:
        new = not self.path.exists()
        if self.header is None:
            self.header = self.columns if new else self._existing_header()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.header, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _existing_header(self) -> list[str]:
        with self.path.open(newline="") as handle:
            return next(csv.reader(handle), None) or self.columns


@dataclass
class LogRow:
    """One row of the training log: the ``steps`` steps up to ``step``."""

    step: int
    steps: int
    skipped: int
    """Batches of these steps whose loss or gradients were not finite (no update)."""
    means: dict[str, float]
    """``t_mean`` and each loss term, averaged over the steps not skipped (NaN when all were)."""
    lr: float
    """Learning rate of the last step."""
    samples_per_s: float

    def csv(self) -> dict[str, str | int]:
        return {"step": self.step, "t_mean": f"{self.means['t_mean']:.2f}",
                **{name: f"{self.means[name]:.6g}" for name in TERM_NAMES},
                "lr": f"{self.lr:.6g}", "samples_per_s": f"{self.samples_per_s:.4g}", "skipped": self.skipped}


class StepWindow:
    """The steps since the last row: ``t``, loss terms and skip flags summed on ``device``."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(TERM_NAMES) + 2, device=device)  # t, the terms, skipped
        self.steps = 0
        self.opened = time.perf_counter()

    def add(self, t: torch.Tensor, terms: LossTerms, skipped: torch.Tensor) -> None:
        """Add one step (``t`` ``(B,)``, ``skipped`` a 0-d bool tensor) without reading the device."""
        values = torch.cat([t.float().mean().view(1), terms.stacked()])
        self.sums += torch.cat([torch.where(skipped, 0.0, values), skipped.float().view(1)])
        self.steps += 1

    def close(self, step: int, samples_per_step: int, lr: float) -> LogRow:
        """The row of the window (one host read) and a new, empty window."""
        sums = self.sums.tolist()
        now = time.perf_counter()
        skipped = round(sums[-1])
        kept = self.steps - skipped
        means = {name: value / kept if kept else math.nan for name, value in zip(("t_mean", *TERM_NAMES), sums)}
        row = LogRow(step, self.steps, skipped, means, lr,
                     samples_per_step * self.steps / max(now - self.opened, 1e-9))
        self.sums.zero_()
        self.steps = 0
        self.opened = now
        return row
