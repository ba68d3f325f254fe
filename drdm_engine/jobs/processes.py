"""Where a run's cases are processed: in this process, or in ``--workers N`` spawned CPU processes (cases
``todo[rank::N]``); under torchrun each rank calls this for its share. Each case is staged, then (in
a resumable run) published and recorded as soon as it is done, so finished cases survive an
interruption. Outputs do not depend on how the cases are shared out."""
from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import time
from dataclasses import dataclass

import torch

from ..core.device import resolve_device
from ..core.errors import DRDMError
from ..model.loading import ModelCache
from .case_run import CaseInfo, run_case
from .cases import Case
from .layout import Layout
from .progress import CaseReport, Progress
from .resources import out_of_memory
from .runfolder import Staging
from .settings import Job
from .state import RunState


@dataclass(frozen=True)
class Work:
    """What every process needs to do its cases (picklable, for spawned workers)."""

    job: Job
    layout: Layout
    infos: dict[str, CaseInfo]
    staging: Staging
    state: RunState | None


@dataclass
class Done:
    """A finished case: its manifest record (kept in memory only when the run is not resumable) and seconds."""

    record: dict | None
    seconds: float


class CaseFailed(DRDMError):
    """A case could not be done; the message names the case."""

    def __init__(self, case_id: str, message: str):
        super().__init__(f"case {case_id}: {message}")
        self.case_id, self.reason = case_id, message


def do_case(case: Case, work: Work, models: ModelCache, device: torch.device, report: CaseReport) -> Done:
    """Stage, warp and write one case; publish and record it when the run is resumable."""
    started = time.perf_counter()
    state = work.state
    stage = work.staging.case(case.id) if state is not None else work.staging.root
    try:
        record = run_case(case, work.infos[case.id], work.job, work.layout, stage, models, device, report)
    except (DRDMError, MemoryError, RuntimeError) as exc:
        problem = str(exc) if isinstance(exc, DRDMError) else out_of_memory(exc)
        if problem is None:
            raise
        raise (CaseFailed(case.id, problem) if state is not None else DRDMError(problem)) from exc
    if state is None:
        return Done(record, time.perf_counter() - started)
    work.staging.publish(stage)
    state.record(case.id, record)
    return Done(None, time.perf_counter() - started)


def run_here(cases: list[Case], work: Work, device: torch.device, models: ModelCache,
             progress: Progress) -> dict[str, Done]:
    """Do ``cases`` one after another in this process."""
    return {case.id: do_case(case, work, models, device, progress.case(case.id)) for case in cases}


def _worker(rank: int, world: int, cases: list[Case], work: Work, device: str, events, stop) -> None:
    """One CPU worker process: the cases ``cases[rank::world]``, events to the parent's queue."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    target = resolve_device(device)
    models = ModelCache(work.job.model, target)
    case = None
    try:
        for case in cases[rank::world]:
            if stop.is_set():
                return
            report = lambda fraction, text, case_id=case.id: events.put(("progress", case_id, fraction, text))
            done = do_case(case, work, models, target, report)
            events.put(("case", case.id, done.seconds))
    except KeyboardInterrupt:
        return
    except CaseFailed as exc:
        events.put(("error", exc.case_id, exc.reason))
        stop.set()
    except BaseException as exc:
        events.put(("error", case.id if case else "?", f"{type(exc).__name__}: {exc}"))
        stop.set()
        raise


def run_workers(cases: list[Case], work: Work, device: torch.device, progress: Progress) -> dict[str, Done]:
    """Do ``cases`` in ``work.job.workers`` spawned processes (each loads its own model)."""
    context = multiprocessing.get_context("spawn")
    events, stop = context.Queue(), context.Event()
    world = min(work.job.workers, len(cases))
    processes = [context.Process(target=_worker, args=(r, world, cases, work, str(device), events, stop))
                 for r in range(world)]
    for p in processes:
        p.start()
    done, error = {}, None
    try:
        while any(p.is_alive() for p in processes) or not events.empty():
            try:
                event = events.get(timeout=0.2)
            except queue_module.Empty:
                continue
            if event[0] == "error":
                error = error or event
            elif event[0] == "case":
                done[event[1]] = Done(None, event[2])
            else:
                progress.update(*event[1:])
    finally:
        stop.set()
        for p in processes:
            p.join()
    if error:
        raise CaseFailed(error[1], error[2])
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise DRDMError(f"a worker process exited with code {failed[0]}")
    return done
