"""The one orchestrator of ``drdm augment``: a single image is a dataset of one case, through the same
checks, run folder, processes, progress, model cache and manifest.

Before anything is written: the settings, every case's headers, the model and the depth against its
schedule, the output names; then, with the output folder locked, the memory and disk the run needs.
The folder is staged; cases run here, in worker processes or on torchrun ranks; a resumable run (a dataset) publishes
each case as it finishes and resumes from them, a single image appears all at once; the manifest is
moved into place last.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ..core.device import resolve_device
from ..core.errors import DRDMError
from ..io.read import check_image_info, inspect_image
from ..model.checkpoint import LoadedModel
from ..model.loading import ModelCache
from ..model.precision import recovery_dtype
from ..warp.working import check_depth, schedule_of, working_size
from . import distributed
from .case_run import CaseInfo
from .cases import Dataset
from .layout import Layout, check_names
from .manifest import build_manifest, write_manifest
from .processes import CaseFailed, Work, run_here, run_workers
from .progress import Progress
from .resources import check, combine, estimate
from .runfolder import RunFolder, Staging
from .settings import Job
from .state import RunState

RESUME_NOTE = "finished cases are kept: rerun the same command to resume"


def inspect_cases(dataset: Dataset, named: bool) -> dict[str, CaseInfo]:
    """Every case's headers, checked once (``named``: errors name the case)."""
    infos = {}
    for case in dataset.cases:
        try:
            channels = tuple(inspect_image(path, "image") for path in case.channels)
            for path, info in zip(case.channels, channels):
                check_image_info(info, path)
            labels = inspect_image(case.labels, "labels") if case.labels else None
        except DRDMError as exc:
            raise (CaseFailed(case.id, str(exc)) if named else exc) from exc
        infos[case.id] = CaseInfo(channels, labels)
    return infos


def _check_resources(dataset: Dataset, infos: dict[str, CaseInfo], job: Job, models: ModelCache, out: Path) -> None:
    """The memory guard (the largest case in each process at once) and the disk guard (all cases)."""
    needs = []
    for case in dataset.cases:
        info = infos[case.id]
        model = models.get(info.channels[0].ndims)
        needs.append(estimate(info.channels[0], info.labels, job.samples,
                              working_size(model, job.size, info.channels[0].ndims), job.field_compression,
                              model is not None, info.channels[1:]))
    processes = min(job.workers, len(dataset.cases))
    check(combine(needs, processes), out, job.samples, processes=processes)


def prepare(dataset: Dataset, layout: Layout, job: Job, out: Path) -> tuple[dict[str, CaseInfo], ModelCache]:
    """Every check that needs no output folder: settings, headers, models and depth, output names."""
    job.check()
    device = resolve_device(job.device)
    if distributed.launched_by_torchrun() and job.workers > 1:
        raise DRDMError("--workers is for a single process; under torchrun each rank is one worker")
    infos = inspect_cases(dataset, named=layout.resumable)
    models = ModelCache(job.model, device)
    for ndims in sorted({info.channels[0].ndims for info in infos.values()}):
        check_depth(job.depth, schedule_of(models.get(ndims)))
    check_names(dataset, layout, out, job.samples, job.originals, job.pairs)
    return infos, models


def run(dataset: Dataset, layout: Layout, job: Job, out: Path, overwrite: bool = False,
        progress_lines: bool = False) -> dict | None:
    """Run (or resume) ``job`` over ``dataset`` into ``out``; returns the manifest (``None`` on ranks other
    than 0 under torchrun)."""
    infos, models = prepare(dataset, layout, job, out)
    group = distributed.start(models.device) if distributed.launched_by_torchrun() else distributed.ProcessGroup()
    try:
        return _run(dataset, layout, job, Path(out), overwrite, progress_lines, infos, models, group)
    finally:
        distributed.stop()


def _notes(dataset: Dataset, infos: dict[str, CaseInfo], models: ModelCache) -> None:
    """What the user should know about how the run deforms (once, from the main process)."""
    for ndims in sorted({info.channels[0].ndims for info in infos.values()}):
        if models.get(ndims) is None:
            print(f"drdm: no trained {ndims}D model: diffusion-only mode (random forward fields, no recovery)",
                  file=sys.stderr)
    flat = [c.id for c in dataset.cases if infos[c.id].channels[0].single_slice]
    if flat:
        print(f"drdm: one-slice 3D image{'s' if len(flat) > 1 else ''}: deformed in-plane, written back in 3D with "
              f"{'their' if len(flat) > 1 else 'its'} geometry", file=sys.stderr)


def _run(dataset: Dataset, layout: Layout, job: Job, out: Path, overwrite: bool, progress_lines: bool,
         infos: dict[str, CaseInfo], models: ModelCache, group: distributed.ProcessGroup) -> dict | None:
    started = time.perf_counter()
    signature = {"dataset": str(Path(dataset.root).absolute()), "kind": dataset.kind, "job": job.signature(),
                 "cases": [c.id for c in dataset.cases]}
    state = RunState(out, signature, overwrite) if layout.resumable else None
    folder = RunFolder(out, overwrite, lambda name: layout.is_output(name, job.samples),
                       state.resumes if state is not None else None)
    problem, staging, resumed = None, None, False
    if group.main:
        try:
            staging = folder.open()
            if not job.force_large:
                _check_resources(dataset, infos, job, models, out)
            resumed = state.prepare() if state is not None else False
        except DRDMError as exc:
            folder.abort()
            problem = str(exc)
    problems = [p for p in group.gather(problem) if p]
    if problems:
        raise DRDMError(problems[0])
    try:
        root = group.gather(str(staging.root) if staging else None)[0]
        work = Work(job, layout, infos, Staging(Path(root), out), state)
        return _process(dataset, work, models, group, progress_lines, folder, resumed, started)
    except BaseException:
        if group.main:
            folder.abort()
        raise


def _process(dataset: Dataset, work: Work, models: ModelCache, group: distributed.ProcessGroup,
             progress_lines: bool, folder: RunFolder, resumed: bool, started: float) -> dict | None:
    state, job, layout = work.state, work.job, work.layout
    ids = [c.id for c in dataset.cases]
    finished = state.finished(ids) if state is not None else set()
    if group.main and resumed:
        print(f"drdm: resuming {folder.out}: {len(finished)} of {len(ids)} cases already done", file=sys.stderr)
    if group.main:
        _notes(dataset, work.infos, models)
    mine = [c for c in dataset.cases if c.id not in finished][group.rank::group.world_size]
    progress = Progress([c.id for c in mine], progress_lines, enabled=group.main)
    error, done = None, {}
    try:
        if job.workers > 1 and len(mine) > 1:
            done = run_workers(mine, work, models.device, progress)
        else:
            done = run_here(mine, work, models.device, models, progress)
    except DRDMError as exc:
        error = str(exc)
    finally:
        progress.close()
    gathered = group.gather((error, {k: d.seconds for k, d in done.items()}))
    errors = [e for e, _ in gathered if e]
    if errors:
        raise DRDMError(f"{errors[0]} ({RESUME_NOTE})" if layout.resumable else errors[0])
    if not group.main:
        group.barrier()
        return None
    records = [state.read(i) if state is not None else done[i].record for i in ids]
    model = models.get(work.infos[ids[0]].channels[0].ndims)
    run = {"device": str(models.device), "network_precision": _precision(model, job, models.device)}
    seconds = {k: v for _, s in gathered for k, v in s.items()}
    manifest = build_manifest(dataset, layout, job, model, run, records, time.perf_counter() - started, seconds)
    write_manifest(work.staging.root, manifest, dataset, layout, job)
    folder.commit(layout.manifest)
    group.barrier()
    return manifest


def _precision(model: LoadedModel | None, job: Job, device: torch.device) -> str | None:
    """How the recovery network runs (``None`` without a model)."""
    if model is None:
        return None
    return "bf16 autocast" if recovery_dtype(job.precision, device) else "fp32"
