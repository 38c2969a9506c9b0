"""Hydra's Optuna sweeper, with divergence handled the way an lr search needs.

An lr search walks into divergence on purpose. Hydra's Optuna sweeper expects every trial to
return a float; a precond job that diverged (or failed) returns a
:class:`precond.run.entry.NotCompleted` instead. Here such a trial is handed to Optuna as a
**failed** trial, with one clear warning (``trial 7 (lr=3.2): the run diverged (at step 40)``),
and the search goes on. When no trial completed, Optuna has no best value: instead of Hydra's
traceback, ``optimization_results.yaml`` says so (``best_value: null`` and why), the sweep
report is written as for any sweep, and the command exits 1.

``conf/experiment/optuna_lr.yaml`` selects it by setting ``hydra.sweeper._target_`` to
:class:`GuardedOptunaSweeper`; every other key is the Optuna sweeper's own.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import OmegaConf

from precond.errors import ConfigError
from precond.settings import Int
from precond.sweep.callbacks import OPTIMIZATION_RESULTS as RESULTS

log = logging.getLogger("precond")


class TrialNotCompleted(ValueError):
    """Raised by a failed trial's JobReturn: Optuna's sweeper records the trial as failed with this text."""


class _FailedTrial(JobReturn):
    """A failed job's return whose value raises its error quietly (Hydra's own also prints to stderr
    at every access, twice per trial here)."""

    @property
    def return_value(self) -> Any:
        raise self._return_value

    @return_value.setter
    def return_value(self, value: Any) -> None:
        self._return_value = value


class _FailNotCompleted:
    """The launcher, seen by the Optuna sweeper: a job that returned NotCompleted becomes a FAILED job."""

    def __init__(self, launcher: Any):
        self._launcher = launcher

    def launch(self, job_overrides, initial_job_idx):
        from precond.run.entry import NotCompleted

        returns = list(self._launcher.launch(job_overrides, initial_job_idx))
        for k, ret in enumerate(returns):
            value = ret._return_value if ret.status == JobStatus.COMPLETED else None
            if isinstance(value, NotCompleted) or (ret.status == JobStatus.COMPLETED and value is None):
                what = str(value) if value is not None else "the run returned no value"
                failed = _FailedTrial(**{f.name: getattr(ret, f.name) for f in dataclasses.fields(ret)})
                failed.status = JobStatus.FAILED
                failed._return_value = TrialNotCompleted(
                    f"trial {initial_job_idx + k} ({' '.join(ret.overrides or [])}): {what}; reported to Optuna "
                    "as a failed trial")
                returns[k] = failed
        return returns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._launcher, name)


class GuardedOptunaSweeper(OptunaSweeper):
    """:class:`OptunaSweeper` whose diverged or failed trials are failed trials, and which ends
    without a traceback when no trial completed (see the module docstring)."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweeper.launcher = _FailNotCompleted(self.sweeper.launcher)
        self._sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> None:
        n_trials = getattr(self.sweeper, "n_trials", 1)
        try:
            Int(lo=1).check("hydra.sweeper.n_trials", n_trials, "the number of runs Optuna may start")
        except ConfigError as err:
            _refuse(str(err))
        try:
            return super().sweep(arguments)
        except (ValueError, TrialNotCompleted) as err:
            if not isinstance(err, TrialNotCompleted) and not _any_run(self._sweep_dir):
                # refused by Optuna before any trial ran: a search space it cannot sample (low > high, ...)
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                _refuse(f"hydra.sweeper.params: expected a search space Optuna can sample, got an error before "
                        f"any trial ran: {first} — e.g. interval(low, high) with low < high")
            if completed_trials(self._sweep_dir):
                if not isinstance(err, TrialNotCompleted):
                    raise
                problem = f"stopped: more trials failed than hydra.sweeper.max_failure_rate allows ({err})"
            else:
                problem = "no trial completed (each diverged or failed): Optuna has no best value"
            log.error("%s; see %s and the runs' summary.json", problem, self._sweep_dir / RESULTS)
            OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": None, "best_value": None,
                                             "problem": problem}), self._sweep_dir / RESULTS)
            return None


def _refuse(message: str) -> None:
    import sys

    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _any_run(sweep_dir: Path) -> bool:
    return sweep_dir.is_dir() and any(sweep_dir.rglob("summary.json"))


def completed_trials(sweep_dir: Path) -> int:
    """Runs below ``sweep_dir`` whose summary says completed."""
    import json

    count = 0
    for path in sweep_dir.rglob("summary.json"):
        try:
            count += json.loads(path.read_text(encoding="utf-8")).get("status") == "completed"
        except (OSError, ValueError, AttributeError):
            continue
    return count
