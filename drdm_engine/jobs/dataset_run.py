"""Running a dataset job: the output folder (new or resumed), progress over cases and samples, and
the processes — in this process, ``--workers N`` spawned CPU processes, or one process per rank under
``torchrun`` (cases ``todo[rank::world]``). Outputs do not depend on how the cases are shared out."""
from __future__ import annotations

import json
import multiprocessing
import os
import queue as queue_module
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..core.errors import DRDMError
from ..io.read import inspect_image
from ..io.write import write_json
from ..warp.case import resolve_device
from .cases import Case, Dataset
from .dataset import STATE, Job, Layout, _Models, _record_path, process_case, write_manifest
from .runfolder import RunFolder, lock_folder, unlock_folder, unwritable


def _finished(out: Path, cases: tuple[Case, ...]) -> set[str]:
    return {c.id for c in cases if _record_path(out, c.id).is_file()}


def _run_file(out: Path) -> Path:
    return out / STATE / "run.json"


def _signature(dataset: Dataset, job: Job) -> dict:
    return {"dataset": os.path.abspath(dataset.root), "kind": dataset.kind, "job": job.signature(),
            "cases": [c.id for c in dataset.cases]}


def open_folder(out: Path, dataset: Dataset, job: Job, overwrite: bool):
    """Create ``out``, take its lock (a folder in use by another run is refused) and :func:`prepare` it;
    returns (resumed, the lock for :func:`runfolder.unlock_folder`)."""
    if out.exists() and not out.is_dir():
        raise DRDMError(f"--out {out} is a file, not a folder; choose a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(out, exc) from exc
    lock = lock_folder(out)
    try:
        return prepare(out, dataset, job, overwrite), lock
    except BaseException:
        unlock_folder(lock)
        raise


def prepare(out: Path, dataset: Dataset, job: Job, overwrite: bool) -> bool:
    """Check ``out`` and record this run in it; returns True when it resumes an interrupted run of the
    same settings."""
    signature = _signature(dataset, job)
    run_file = _run_file(out)
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous != signature:
            changed = sorted(k for k in signature if previous.get(k) != signature[k])
            raise DRDMError(f"output folder {out} holds another dataset run ({', '.join(changed)} differ); rerun with "
                            f"the same inputs and settings to resume it, or choose another --out")
        return True
    RunFolder(out, overwrite, lambda name: False).check()
    try:
        (out / STATE / "cases").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(out, exc) from exc
    write_json(signature, run_file)
    return False


class _Bar:
    """Progress over cases and samples (tqdm on stderr with a time estimate, or ``drdm-progress`` lines)."""

    def __init__(self, cases: int, samples: int, lines: bool, enabled: bool = True):
        self.total, self.cases, self.done_samples, self.done_cases = cases * samples, cases, 0, 0
        self.lines, self.bar = lines, None
        if enabled and not lines:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="sample", file=sys.stderr, desc="cases 0/%d" % cases)
        self.enabled = enabled

    def __call__(self, kind: str) -> None:
        if kind == "sample":
            self.done_samples += 1
        else:
            self.done_cases += 1
        if not self.enabled:
            return
        text = f"cases {self.done_cases}/{self.cases}"
        if self.lines:
            print(f"drdm-progress {self.done_samples / max(1, self.total):.4f} {text}, "
                  f"samples {self.done_samples}/{self.total}", flush=True)
        else:
            self.bar.set_description_str(text, refresh=False)
            self.bar.update(1 if kind == "sample" else 0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _worker(rank: int, world: int, dataset: Dataset, todo: list[str], job: Job, out: str, events, stop) -> None:
    """One CPU worker process: the cases ``todo[rank::world]``, events to the parent's queue."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    device = resolve_device(job.device)
    models = _Models(job, device)
    layout = Layout(dataset)
    by_id = {c.id: c for c in dataset.cases}
    try:
        for case_id in todo[rank::world]:
            if stop.is_set():
                return
            started = time.perf_counter()
            try:
                process_case(by_id[case_id], layout, job, Path(out), models, device, lambda kind: events.put((kind,)))
            except DRDMError as exc:
                events.put(("error", case_id, str(exc)))
                stop.set()
                return
            events.put(("case", case_id, time.perf_counter() - started))
    except KeyboardInterrupt:
        return
    except BaseException as exc:
        events.put(("error", case_id, f"{type(exc).__name__}: {exc}"))
        stop.set()
        raise


def _run_workers(dataset: Dataset, todo: list[str], job: Job, out: Path, bar: _Bar) -> dict[str, float]:
    """Run ``todo`` in ``job.workers`` spawned processes; returns each case's seconds."""
    context = multiprocessing.get_context("spawn")
    events, stop = context.Queue(), context.Event()
    world = min(job.workers, len(todo))
    processes = [context.Process(target=_worker, args=(r, world, dataset, todo, job, str(out), events, stop))
                 for r in range(world)]
    for p in processes:
        p.start()
    seconds, error = {}, None
    try:
        while any(p.is_alive() for p in processes) or not events.empty():
            try:
                event = events.get(timeout=0.2)
            except queue_module.Empty:
                continue
            if event[0] == "error":
                error = error or event
            elif event[0] == "case":
                seconds[event[1]] = event[2]
                bar("case")
            else:
                bar("sample")
    finally:
        stop.set()
        for p in processes:
            p.join()
    if error:
        raise DRDMError(f"case {error[1]}: {error[2]}")
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise DRDMError(f"a worker process exited with code {failed[0]}; finished cases are kept, rerun to resume")
    return seconds


def _run_here(dataset: Dataset, todo: list[str], job: Job, out: Path, device: torch.device, bar: _Bar) -> dict[str, float]:
    models = _Models(job, device)
    layout = Layout(dataset)
    by_id = {c.id: c for c in dataset.cases}
    seconds = {}
    for case_id in todo:
        started = time.perf_counter()
        try:
            process_case(by_id[case_id], layout, job, out, models, device, bar)
        except DRDMError as exc:
            raise DRDMError(f"case {case_id}: {exc}") from exc
        seconds[case_id] = time.perf_counter() - started
        bar("case")
    return seconds


def run(dataset: Dataset, job: Job, out: Path, overwrite: bool = False, progress_lines: bool = False) -> dict | None:
    """Run (or resume) a dataset job; returns the manifest (``None`` on ranks other than 0 under torchrun)."""
    from . import distributed

    if job.samples < 1:
        raise DRDMError(f"--samples must be at least 1, got {job.samples}")
    if job.workers < 1:
        raise DRDMError(f"--workers must be at least 1, got {job.workers}")
    device = resolve_device(job.device)
    torchrun = distributed.launched_by_torchrun()
    if torchrun and job.workers > 1:
        raise DRDMError("--workers is for a single process; under torchrun each rank is one worker")
    if torchrun and device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    group = distributed.start(device) if torchrun else distributed.ProcessGroup()
    try:
        return _run(dataset, job, out, overwrite, progress_lines, device, group)
    finally:
        distributed.stop()


def _run(dataset: Dataset, job: Job, out: Path, overwrite: bool, progress_lines: bool, device: torch.device,
         group) -> dict | None:
    started = time.perf_counter()
    problem, resumed, lock = None, False, None
    if group.main:
        try:
            resumed, lock = open_folder(out, dataset, job, overwrite)
        except DRDMError as exc:
            problem = str(exc)
    try:
        return _run_locked(dataset, job, out, progress_lines, device, group, problem, resumed, started)
    finally:
        if lock is not None:
            unlock_folder(lock)


def _run_locked(dataset: Dataset, job: Job, out: Path, progress_lines: bool, device: torch.device, group,
                problem: str | None, resumed: bool, started: float) -> dict | None:
    problems = [p for p in group.gather(problem) if p]
    if problems:
        raise DRDMError(problems[0])
    finished = _finished(out, dataset.cases)
    todo = [c.id for c in dataset.cases if c.id not in finished]
    if group.main and resumed:
        print(f"drdm: resuming {out}: {len(finished)} of {len(dataset.cases)} cases already done", file=sys.stderr)
    mine = todo[group.rank::group.world_size]
    bar = _Bar(len(mine), job.samples, progress_lines, enabled=group.main)
    error = None
    try:
        if job.workers > 1 and len(mine) > 1:
            seconds = _run_workers(dataset, mine, replace(job, device=str(device)), out, bar)
        else:
            seconds = _run_here(dataset, mine, job, out, device, bar)
    except DRDMError as exc:
        error, seconds = str(exc), {}
    finally:
        bar.close()
    gathered = group.gather((error, seconds))
    errors = [e for e, _ in gathered if e]
    if errors:
        raise DRDMError(f"{errors[0]} (finished cases are kept: rerun the same command to resume)")
    if not group.main:
        group.barrier()
        return None
    case_seconds = {k: v for _, s in gathered for k, v in s.items()}
    model = _Models(job, device).get(inspect_image(dataset.cases[0].channels[0]).ndims)
    manifest = write_manifest(out, dataset, job, model, time.perf_counter() - started, case_seconds)
    group.barrier()
    return manifest
