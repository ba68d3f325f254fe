"""Progress of a run over its cases: a bar on stderr, or ``drdm-progress <fraction> <text>`` lines on stdout
(what the Slicer module reads). Each case reports its own fraction (0…1) and a short text; the run's
fraction is the mean over its cases."""
from __future__ import annotations

import sys

from ..warp.case import Report as CaseReport


class Progress:
    """Progress of ``cases`` cases (``ids`` in the order they are reported); ``lines``: machine-readable
    lines instead of a bar; ``enabled=False`` shows nothing (other ranks under torchrun)."""

    def __init__(self, ids: list[str], lines: bool, enabled: bool = True):
        self.ids, self.lines, self.enabled = ids, lines, enabled
        self.done = dict.fromkeys(ids, 0.0)
        self.bar = None
        if enabled and not lines:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
                            file=sys.stderr)

    def case(self, case_id: str) -> CaseReport:
        """The reporter of one case."""
        return lambda fraction, text: self.update(case_id, fraction, text)

    def update(self, case_id: str, fraction: float, text: str) -> None:
        """Case ``case_id`` is ``fraction`` done, doing ``text``."""
        self.done[case_id] = fraction
        if not self.enabled:
            return
        if len(self.ids) > 1:
            text = f"case {self.ids.index(case_id) + 1}/{len(self.ids)} {case_id}: {text}"
        overall = sum(self.done.values()) / max(1, len(self.ids))
        if self.lines:
            print(f"drdm-progress {overall:.4f} {text}", flush=True)
        else:
            self.bar.n = int(1000 * overall)
            self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
