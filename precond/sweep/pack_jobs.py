"""A pack's lifecycle: jobs of a sweep that differ only in stackable values
(:mod:`precond.sweep.pack_rules`) trained as one stacked model
(:func:`precond.sweep.pack_training.train_pack`), each job's run dir ending as it would alone.

``hydra/launcher=packed`` calls :func:`launch_pack` once per pack.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from precond.errors import ConfigError
from precond.provenance import environment
from precond.run.config import resolve, settings_from_plain
from precond.run.entry import (
    JobInfo,
    NotCompleted,
    base_summary,
    failures_written,
    finish_run,
    load_data,
    log_result,
    note_sweep_dir,
    open_runlog,
    prepare,
    save_resolved_config,
    settle_threads,
    target_value,
    write_failure,
)
from precond.run.files import RunDirectory, RunDirInUse, write_summary
from precond.run.interrupts import StopRequest
from precond.sweep.callbacks import write_sweep_report
from precond.sweep.pack_training import PackMember, train_pack

log = logging.getLogger("precond")


def run_pack(jobs: list[tuple[DictConfig | dict, JobInfo]], should_stop=None) -> list:
    """Train jobs that differ only in stackable values (:mod:`precond.sweep.pack_rules`) as packs
    (:func:`precond.sweep.pack_training.train_pack`); each job's run dir ends as it would alone.
    A job's config is its DictConfig, or that config already resolved (:func:`precond.run.config.resolve`:
    the launcher resolves every job once to group them, and hands that on).

    Returns one entry per job: its summary, or the exception that failed it (a failure while
    building one job fails that job only). Finished jobs are reported, not redone; jobs resumed
    from checkpoints are packed with the jobs that stopped at the same step.
    """
    results: list = [None] * len(jobs)
    with contextlib.ExitStack() as stack:
        by_step: dict[Optional[int], list] = {}
        for i, (cfg, job) in enumerate(jobs):
            try:  # the whole config is checked before anything is written into the job's dir
                plain = cfg if isinstance(cfg, dict) else resolve(cfg)
                settings = settings_from_plain(plain)
                directory = stack.enter_context(RunDirectory(job.run_dir, plain))
            except ConfigError as err:  # RunDirInUse included
                if not isinstance(err, RunDirInUse):
                    write_summary(job.run_dir, {"status": "failed", "error": str(err), "overrides": job.overrides})
                results[i] = err
                continue
            if directory.finished is not None:
                log.info("%s already holds this finished run (status %s): not redone", job.run_dir,
                         directory.finished["status"])
                results[i] = directory.finished
                continue
            # fresh jobs pack together; resumed ones with those stopped at the same step
            step = directory.checkpoint["step"] if directory.checkpoint is not None else None
            by_step.setdefault(step, []).append((i, plain, settings, job, directory.checkpoint))
        for members in by_step.values():
            _train_one_pack(stack, members, results, should_stop)
    for result, (_, job) in zip(results, jobs):
        if isinstance(result, dict):
            log_result(result, job.label)
    return results


def _train_one_pack(stack: contextlib.ExitStack, members: list, results: list, should_stop) -> None:
    """Build every member (a member that fails to build fails alone), train them as one pack, write their files."""
    prepared, data = [], None
    for i, plain, settings, job, checkpoint in members:
        base = {**base_summary(settings, job), **environment(settings.device)}
        save_resolved_config(plain, job.run_dir)
        runlog = stack.enter_context(open_runlog(plain, settings, job, checkpoint))
        try:
            with failures_written(runlog, job.run_dir, base):
                data = data or load_data(settings)  # one dataset: the pack's jobs share its config
                prepared.append((i, runlog, prepare(settings, job, base, runlog, data, checkpoint), job.label))
                pack_settings = settings  # the members share every key that sets the thread count
        except Exception as err:
            results[i] = err
    if not prepared:
        return
    log.info("training %d jobs as one pack", len(prepared))
    threads = settle_threads(pack_settings, prepared[0][2].parts.model, data, jobs=len(prepared))
    members = [PackMember(p.parts.model, p.parts.optimizer, p.loop, runlog, p.parts.scheduler, p.parts.monitors,
                          p.parts.saver(p.run_dir), p.resume, label=label or "")
               for _, runlog, p, label in prepared]
    try:
        summaries = train_pack(members, data, should_stop=should_stop)
    except Exception as err:  # the pack's step failed: every member fails with it
        for i, runlog, p, _ in prepared:
            write_failure(runlog, p.run_dir, p.base, err)
            results[i] = err
        return
    for (i, runlog, p, _), summary in zip(prepared, summaries):
        summary = {**p.base, **summary, "packed": len(prepared), **threads}
        finish_run(p, runlog, summary)
        results[i] = summary




def launch_pack(jobs: list[tuple[DictConfig | dict, JobInfo]]) -> list[Optional[float]]:
    """``hydra/launcher=packed``'s task for one pack: :func:`run_pack` with the entry point's rules
    for a sweep (a failed job fails alone; an interrupt writes every member's files and the sweep
    report, then ends the sweep with 128 + signal)."""
    if jobs:
        note_sweep_dir(Path(jobs[0][1].sweep_dir))
    with StopRequest() as stop:
        results = run_pack(jobs, should_stop=stop)
    values = []
    for (_, job), result in zip(jobs, results):
        if isinstance(result, Exception):
            print(f"error: {job.run_dir}: {result}", file=sys.stderr)
            values.append(NotCompleted("failed", str(result)))
        else:
            values.append(target_value(result))
    stopped = [r for r in results if isinstance(r, dict) and r["status"] == "interrupted"]
    if stopped or stop():  # a signal after the pack's last step also ends the sweep, once its files are written
        sweep_dir = jobs[0][1].sweep_dir
        where = (f"at step {stopped[0]['steps']}: checkpoints written for {len(stopped)} packed jobs" if stopped
                 else "after a pack finished")
        print(f"interrupted {where}; re-run the same command with hydra.sweep.dir={sweep_dir} to resume",
              file=sys.stderr)
        write_sweep_report(Path(sweep_dir))
        stop.forward()
        raise SystemExit(stop.exit_code)
    return values


