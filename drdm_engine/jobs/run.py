"""The one orchestrator of ``drdm augment``: a single image is a dataset of one case, through the same
checks, run folder, processes, progress, model cache and manifest.

Before anything is written: the settings, every case's headers, the model and the depth against its
schedule, the output names; then, with the output folder locked, the memory and disk the run needs.
The folder is staged; cases run here, in worker processes or on torchrun ranks; a resumable run (a dataset) publishes
each case as it finishes and resumes from them, a single image appears all at once; the manifest is
moved into place last.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from ..core.device import resolve_device
from ..core.errors import DRDMError
from ..io.read import check_image_info, inspect_image
from ..io.write import writing
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
from .state import RunState, record_files, run_signature

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
    if dataset.kind == "nnunet" and os.path.abspath(out) == os.path.abspath(dataset.root):
        raise DRDMError(f"--out {out} is the input nnU-Net dataset itself; write the augmented dataset into "
                        f"another folder (e.g. a new DatasetNNN_Name)")
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


def _open(folder: RunFolder, state: RunState | None, dataset: Dataset, infos: dict[str, CaseInfo], job: Job,
          models: ModelCache) -> tuple[Staging, set[str]]:
    """Lock and stage the output folder, find the cases a resumed run already finished, check the memory
    and disk the others need, then settle the resume state; returns the staging and the finished cases.
    A refusal leaves the folder as it was."""
    staging = folder.open()
    try:
        resumes = state is not None and state.resumes()
        finished = state.finished([c.id for c in dataset.cases]) if resumes else set()
        todo = Dataset(dataset.root, dataset.kind, tuple(c for c in dataset.cases if c.id not in finished),
                       dataset.file_ending, dataset.dataset_json)
        if not job.force_large and todo.cases:
            _check_resources(todo, infos, job, models, folder.out)
        if state is not None:
            state.prepare()
    except BaseException:
        folder.abort()
        raise
    return staging, finished


def _run(dataset: Dataset, layout: Layout, job: Job, out: Path, overwrite: bool, progress_lines: bool,
         infos: dict[str, CaseInfo], models: ModelCache, group: distributed.ProcessGroup) -> dict | None:
    started = time.perf_counter()
    state = RunState(out, run_signature(dataset, job), overwrite) if layout.resumable else None
    folder = RunFolder(out, overwrite, lambda name: layout.is_output(name, job.samples),
                       state.resumes if state is not None else None)
    problem, staging, finished = None, None, set()
    if group.main:
        try:
            staging, finished = _open(folder, state, dataset, infos, job, models)
        except DRDMError as exc:
            problem = str(exc)
    problems = [p for p in group.gather(problem) if p]
    if problems:
        raise DRDMError(problems[0])
    try:
        root, finished = group.gather((str(staging.root) if staging else None, finished))[0]  # rank 0's view
        work = Work(job, layout, infos, Staging(Path(root), out), state)
        return _process(dataset, work, models, group, progress_lines, folder, finished, started)
    except BaseException:
        if group.main:
            folder.abort()
        raise


def _leftovers(work: Work, out: Path, records: list[dict]) -> list[str]:
    """Files of an earlier run that this one (with ``--overwrite``) did not replace and the manifest does not
    list: sample files beyond this run's count, or everything a run of other settings recorded."""
    if work.state is None:
        return work.layout.earlier_samples(out, work.job.samples)
    written = set().union(*(record_files(r) for r in records))
    return sorted(p for p in work.state.discarded - written if (out / p).is_file())


def _process(dataset: Dataset, work: Work, models: ModelCache, group: distributed.ProcessGroup,
             progress_lines: bool, folder: RunFolder, finished: set[str], started: float) -> dict | None:
    state, job, layout = work.state, work.job, work.layout
    ids = [c.id for c in dataset.cases]
    if group.main and finished:
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
    with writing(folder.out / layout.manifest):
        write_manifest(work.staging.root, manifest, dataset, layout, job)
    folder.commit(layout.manifest)
    leftovers = _leftovers(work, folder.out, records)
    if leftovers:
        print(f"drdm: note: {len(leftovers)} files of an earlier run remain in {folder.out}/ ({leftovers[0]}"
              f"{', …' if len(leftovers) > 1 else ''}); the manifest lists this run's files only"
              f"{' (nnU-Net would train on them: remove them)' if dataset.kind == 'nnunet' else ''}", file=sys.stderr)
    group.barrier()
    return manifest


def _precision(model: LoadedModel | None, job: Job, device: torch.device) -> str | None:
    """How the recovery network runs (``None`` without a model)."""
    if model is None:
        return None
    return "bf16 autocast" if recovery_dtype(job.precision, device) else "fp32"
