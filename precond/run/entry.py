"""The one training entry point: ``precond-train`` (= ``python -m precond.run.entry``).

A Hydra app over ``conf/train.yaml``: it owns the lifecycle of one run (validate,
build, train, write the run's files). Turning the config into plain objects is
:mod:`precond.run.config`; the end-of-sweep report is :mod:`precond.sweep.callbacks`.

Single run::

    precond-train preconditioner=sgd lr=0.05 steps=500

Sweep (a comparison table and plot are written to the sweep dir at the end)::

    precond-train -m preconditioner=sgd,adagrad,rmsprop,adam seed=0,1,2

Packed sweep (``hydra/launcher=packed``: stackable jobs trained as one stacked model;
:func:`run_pack` is each pack's lifecycle, :mod:`precond.sweep.pack_training` the training)::

    precond-train -m hydra/launcher=packed lr=0.01,0.03,0.1 seed=0,1,2,3
"""
from __future__ import annotations

from precond.threads import quiet_waiting

quiet_waiting()  # the CLI owns its process: OpenMP's threads sleep while they wait (read once, when torch loads)

import contextlib
import dataclasses
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from precond.errors import ConfigError
from precond.metrics import after_warmup
from precond.provenance import environment
from precond.run.advice import advice, null_choices_as_deletions, refuse_null_groups
from precond.run.checkpoint import CHECKPOINT, CHECKPOINT_FORMAT, atomic_save, rng_state, set_rng_state
from precond.run.config import (
    RunOptions,
    RunSettings,
    build_data,
    build_model,
    build_monitors,
    build_optimizer_from_settings,
    build_schedule,
    resolve,
    settings_from_plain,
)
from precond.run.files import (
    FINISHED,
    RunDirectory,
    RunDirInUse,
    RunLog,
    identifying_overrides,
    write_summary,
    write_text_atomically,
    yaml_text,
)
from precond.run.interrupts import StoppedBetweenRuns, StopRequest, stop_between_runs
from precond.run.loop import LoopSettings, train
from precond.run.paths import default_data_root, run_label, settle_output_root
from precond.run.progress import TUNED_RUN
from precond.settings import is_int, is_number, rule_of
from precond.sweep.callbacks import write_sweep_report
from precond.threads import apply_threads, choose_threads, forward_flops

log = logging.getLogger("precond")



def config_dir() -> str:
    """The configs: the repository's top-level ``conf/`` when precond runs from its source tree
    (editable install, checkout), else the copy the wheel carries inside the package (``precond/conf``)."""
    package = Path(__file__).resolve().parents[1]
    source_tree = package.parent / "conf"
    if (source_tree / "train.yaml").is_file() and (package.parent / "pyproject.toml").is_file():
        return str(source_tree)
    return str(package / "conf")


CONF_DIR = config_dir()

# ${run_id:} in conf/train.yaml's default run dir: pid + random, so two runs started in the same
# second never share a directory (cached: one value per process, the same at every resolution)
if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", lambda: f"{os.getpid()}{secrets.token_hex(2)}", use_cache=True)
def batch_scaled_lr(lr: float, batch_size) -> float:
    """A default lr tuned at batch 64, scaled by ``√(batch/64)`` below it (unchanged above). BNP's step divides
    gradients by running input variances; at batch 1 its gradient noise is 8× larger in norm, and the batch-64
    default diverges (``model=mlp preconditioner=bnp batch_size=1``); the square-root rule keeps the noise of a
    step at the level the default was tuned for. A value that is not a positive integer is left to the schema."""
    if not is_int(batch_size) or batch_size < 1:
        return lr
    return lr * min(1.0, (batch_size / 64) ** 0.5)


# ${precond_batch_scaled_lr:lr,batch_size} in conf/preconditioner/bnp.yaml: BNP's default below batch 64
if not OmegaConf.has_resolver("precond_batch_scaled_lr"):
    OmegaConf.register_new_resolver("precond_batch_scaled_lr", batch_scaled_lr)
# ${precond_run_label:${name},${hydra.job.override_dirname}} in conf/train.yaml's default run dir
if not OmegaConf.has_resolver("precond_run_label"):
    OmegaConf.register_new_resolver("precond_run_label", run_label)
# ${precond_default_data_root:} in conf/paths/default.yaml: used when PRECOND_DATA_ROOT is not set
if not OmegaConf.has_resolver("precond_default_data_root"):
    OmegaConf.register_new_resolver("precond_default_data_root", default_data_root)


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """What a run reads from its Hydra job: from ``HydraConfig`` for a job run alone, from the
    job's own composed ``hydra`` node for a job of a pack (:func:`run_pack`)."""

    run_dir: Path
    overrides: list
    choices: dict
    multirun: bool
    sweep_dir: str

    @property
    def label(self) -> Optional[str]:
        """A sweep job's name in log lines: ``job 3``, or its place below the sweep dir for a tuned sweep."""
        if not self.multirun:
            return None
        try:
            # resolved both: Hydra gives the job's dir absolute, a command line may give the sweep dir relative
            where = self.run_dir.resolve().relative_to(Path(self.sweep_dir).resolve()).as_posix()
        except ValueError:
            where = self.run_dir.name
        return f"job {where}"

    @classmethod
    def of(cls, hc) -> JobInfo:
        return cls(run_dir=Path(hc.runtime.output_dir),
                   overrides=_plain_overrides(hc),
                   choices=dict(hc.runtime.choices.items()), multirun=hc.mode == RunMode.MULTIRUN,
                   sweep_dir=str(hc.sweep.dir))


def _task_overrides() -> list[str]:
    return JobInfo.of(HydraConfig.get()).overrides


def _plain_overrides(hc) -> list[str]:
    """The task's overrides as typed (read unresolved: an override may itself contain ``${...}``)."""
    return [o for o in OmegaConf.to_container(hc.overrides.task, resolve=False) if not o.startswith("hydra.")]


def _wandb_settings(settings: RunSettings, job: JobInfo):
    """The logger settings with precond's defaults where the user left them null: group (the sweep,
    or ``name`` for a single run), name (the run's identifying overrides), job_type (``train``, or
    the tuned sweep's stage); precond's own tags go before the user's."""
    choices, user = job.choices, settings.logger
    tags = [settings.preconditioner.name, f"reg:{settings.regularization.name}",
            f"norm:{settings.normalization.name}", f"model:{choices.get('model')}",
            f"data:{choices.get('dataset')}", *user.tags]
    return dataclasses.replace(
        user, group=user.group or (Path(job.sweep_dir).name if job.multirun else settings.options.name),
        name=user.name or ",".join(identifying_overrides(job.overrides)) or settings.options.name, tags=tags,
        job_type=user.job_type or settings.options.stage or "train",
    )


def base_summary(settings: RunSettings, job: JobInfo) -> dict:
    options = settings.options
    base = {"seed": settings.loop.seed, "name": options.name, "overrides": job.overrides,
            **{k: getattr(options, k) for k in ("stage", "arm") if getattr(options, k) is not None},
            "choices": {k: v for k, v in job.choices.items() if not k.startswith("hydra")}}
    warmup = getattr(settings.preconditioner, "bnp_warmup", None)  # steps that only collect statistics
    if warmup is not None:  # a method with a warm-up setting records times after it, also at 0 (= the totals)
        base["warmup_steps"] = warmup
    return base


def run(cfg: DictConfig, should_stop=None, job: Optional[JobInfo] = None) -> dict:
    """Validate, build, train; leaves config.yaml and summary.json in the run dir (status
    completed | diverged | failed | interrupted). A dir that holds this same completed run is
    reported, not redone; one that holds another run is refused (:class:`RunDirInUse`)."""
    job = job or JobInfo.of(HydraConfig.get())
    plain = resolve(cfg)
    settings = settings_from_plain(plain)  # the whole config, checked before anything is written
    base = base_summary(settings, job)
    with RunDirectory(job.run_dir, plain) as directory:
        if directory.finished is not None:
            log.info("%s already holds this finished run (status %s): not redone", job.run_dir,
                     directory.finished["status"])
            return directory.finished
        save_resolved_config(plain, job.run_dir)
        base.update(environment(settings.device))
        with open_runlog(plain, settings, job, directory.checkpoint) as runlog:
            with failures_written(runlog, job.run_dir, base):
                data = load_data(settings)
                run_ = prepare(settings, job, base, runlog, data, directory.checkpoint)
                summary = {**base, **train(run_.parts.model, run_.parts.optimizer, data, run_.loop, runlog,
                                           monitors=run_.parts.monitors, scheduler=run_.parts.scheduler,
                                           should_stop=should_stop, checkpoint=run_.parts.saver(job.run_dir),
                                           resume=run_.resume, label=job.label)}
            finish_run(run_, runlog, summary)
    log_result(summary, job.label)
    return summary


def save_resolved_config(plain: dict, run_dir: Path) -> None:
    """``config.yaml``: the run's config with every interpolation resolved."""
    write_text_atomically(run_dir / "config.yaml", yaml_text(plain))


def open_runlog(plain: dict, settings: RunSettings, job: JobInfo, resume: Optional[dict]) -> RunLog:
    wandb_id = resume.get("wandb_id") if resume is not None else None
    return RunLog(job.run_dir, plain, _wandb_settings(settings, job), wandb_id=wandb_id)


@contextlib.contextmanager
def failures_written(runlog: RunLog, run_dir: Path, base: dict):
    """A failure inside leaves summary.json (status failed) and, for a bug, error.txt; then propagates."""
    try:
        yield
    except Exception as err:
        write_failure(runlog, run_dir, base, err)
        raise


def write_failure(runlog: RunLog, run_dir: Path, base: dict, err: Exception) -> None:
    error = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
    runlog.write_summary({**base, "status": "failed", "error": error})
    if not isinstance(err, ConfigError):
        (run_dir / "error.txt").write_text(
            "".join(traceback.format_exception(type(err), err, err.__traceback__)), encoding="utf-8")


def load_data(settings: RunSettings):
    return build_data(settings)


@dataclasses.dataclass
class PreparedRun:
    """One run, built and (when resuming) restored, ready to train."""

    parts: RunParts
    loop: LoopSettings
    run_dir: Path
    base: dict
    resume: Optional[dict]


def prepare(settings: RunSettings, job: JobInfo, base: dict, runlog: RunLog, data,
             resume: Optional[dict]) -> PreparedRun:
    """Build the model, optimizer, schedule and monitors of one run; restore them from ``resume``."""
    model = build_model(settings, data)
    optimizer = build_optimizer_from_settings(settings, model)
    scheduler = build_schedule(settings, optimizer)
    monitors = build_monitors(settings, model, optimizer, data)
    loop = settings.loop
    base["parameters"] = sum(p.numel() for p in model.parameters())
    base.update(settle_threads(settings, model, data))
    parts = RunParts(model, optimizer, scheduler, monitors, runlog.wandb_id)
    if resume is not None:
        parts.restore(resume)
        log.info("resuming %s from its checkpoint at step %d", job.run_dir, resume["step"],
                 extra={TUNED_RUN: settings.options.stage is not None})
    log.info("%s | %s params on %s | %s", ",".join(base["overrides"]) or "defaults",
             base["parameters"], settings.device, job.run_dir, extra={TUNED_RUN: settings.options.stage is not None})
    return PreparedRun(parts, loop, job.run_dir, base, resume["loop"] if resume is not None else None)


def settle_threads(settings: RunSettings, model: torch.nn.Module, data, jobs: int = 1) -> dict:
    """Choose and apply the run's CPU threads (:mod:`precond.threads`) from the ``threads`` key and the
    forward FLOPs of one training step (``jobs`` models, as in a pack, each on a batch of ``batch_size``);
    returns both for the summary."""
    setting = settings.options.threads
    flops = forward_flops(model, data.x_train[:1]) * settings.loop.batch_size * jobs
    count = choose_threads(setting, flops)
    apply_threads(count)
    return {"threads": count, "step_flops": flops / jobs}  # the run's own step (a pack's is jobs × that)


def finish_run(run_: PreparedRun, runlog: RunLog, summary: dict) -> None:
    """The files of a run that ended: weights, optimizer state, summary; the checkpoint goes once finished."""
    if summary.get("warmup_steps") is not None:
        summary.update(after_warmup(summary, summary["warmup_steps"]))
    atomic_save(run_.parts.model.state_dict(), run_.run_dir / "model.pt")
    atomic_save(run_.parts.optimizer.state_dict(), run_.run_dir / "optimizer.pt")
    runlog.write_summary(summary)
    runlog.log_model(run_.run_dir / "model.pt", {key: summary.get(key) for key in MODEL_METADATA})
    if summary["status"] in FINISHED:  # after the summary: a crash before it leaves the checkpoint
        (run_.run_dir / CHECKPOINT).unlink(missing_ok=True)
    else:
        runlog.exit_code = 1  # the W&B run ends with an exit record that says it did not complete


#: summary values that travel with the model artifact
MODEL_METADATA = ("status", "steps", "val/loss", "val/acc", "test/loss", "test/acc", "seed", "git_commit")


@dataclasses.dataclass
class RunParts:
    """The stateful objects of one run and how they go into (and come out of) a checkpoint."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler]
    monitors: tuple
    wandb_id: str

    def saver(self, run_dir: Path):
        """The loop's ``checkpoint`` callback: the loop's state plus everything else, written atomically."""

        def save(loop_state: dict) -> None:
            atomic_save({
                "format": CHECKPOINT_FORMAT, "step": loop_state["step"], "loop": loop_state,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "monitors": [m.state_dict() for m in self.monitors], "rng": rng_state(),
                "wandb_id": self.wandb_id,
            }, run_dir / CHECKPOINT)

        return save

    def restore(self, checkpoint: dict) -> None:
        """Load a checkpoint into freshly built objects (and the global RNGs), last of all before training."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None and checkpoint["scheduler"] is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        for monitor, state in zip(self.monitors, checkpoint["monitors"], strict=True):
            monitor.load_state_dict(state)
        set_rng_state(checkpoint["rng"])


def log_result(summary: dict, label: Optional[str] = None) -> None:
    """One line per finished run, rounded, naming its job in a sweep: ``[job 3] status=completed … steps to
    target 150`` (or "target not reached"). A tuned sweep's runs' lines stay off the console
    (:class:`precond.run.progress.HideTunedRunLines`)."""
    parts = [f"status={summary['status']}"]
    for key in ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc"):
        if is_number(summary.get(key)):
            parts.append(f"{key}={summary[key]:.4g}")
    steps = summary.get("steps_to_target")
    parts.append(f"steps to target {steps:.4g}" if is_number(steps) else "target not reached")
    log.info("%s%s", f"[{label}] " if label else "", " ".join(parts), extra={TUNED_RUN: "stage" in summary})


#: the sweep dir of the job running or last run in this process (None for a single run)
_current_sweep_dir: Optional[Path] = None


def note_sweep_dir(sweep_dir: Optional[Path]) -> None:
    """Remember the sweep this process works on: an interrupt between its jobs writes that sweep's table."""
    global _current_sweep_dir
    _current_sweep_dir = sweep_dir


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | NotCompleted:
    """Hydra task: one job; returns the final value of ``target.metric`` of a completed run (a
    :class:`NotCompleted` otherwise), so a Hydra optimizing sweeper (Optuna) can tune on it.

    Single run: a config error prints one line and exits 2; an interrupt writes the run's
    files and exits 128 + signal. In a sweep, any failure (config error or exception) fails
    only that job (its summary.json and error.txt say why) and the sweep goes on; an
    interrupt writes the comparison table of the jobs so far and ends the sweep.
    """
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    note_sweep_dir(Path(hc.sweep.dir) if multirun else None)
    with StopRequest() as stop:
        try:
            summary = run(cfg, should_stop=stop)
        except RunDirInUse as err:  # nothing is written into another run's directory
            print(f"error: {err}", file=sys.stderr)
            if multirun:
                return NotCompleted("failed", str(err))
            raise SystemExit(2) from None
        except ConfigError as err:  # refused before anything of the run was written
            print(f"error: {err}", file=sys.stderr)
            if multirun:  # the sweep's table lists the job as failed, with why
                if not (run_dir / "summary.json").exists():
                    write_summary(run_dir, {"status": "failed", "error": str(err), "overrides": _task_overrides()})
                return NotCompleted("failed", str(err))
            discard_if_only_hydra_files(run_dir)
            raise SystemExit(2) from None
        except Exception as err:
            if not multirun:
                raise
            if not (run_dir / "summary.json").exists():
                write_summary(run_dir, {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                        "overrides": _task_overrides()})
            log.error("job %s failed: %s: %s (traceback in %s)", hc.job.num, type(err).__name__, err,
                      run_dir / "error.txt")
            if not (run_dir / "error.txt").exists():
                (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            return NotCompleted("failed", f"{type(err).__name__}: {err}")
    if summary["status"] == "interrupted":
        where = f"hydra.sweep.dir={hc.sweep.dir}" if multirun else f"hydra.run.dir={run_dir}"
        print(f"interrupted at step {summary['steps']}: checkpoint written to {run_dir}; re-run the same "
              f"command with {where} to resume", file=sys.stderr)
        if multirun:
            write_sweep_report(Path(hc.sweep.dir))
        stop.forward()  # e.g. submitit's USR2 handler: requeue this job, which then resumes
        raise SystemExit(stop.exit_code)
    if multirun and stop():  # the signal came after the job's last step: the job is done, the sweep stops here
        print(f"interrupted after job {hc.job.num} finished: the table of the finished jobs is in {hc.sweep.dir}; "
              f"re-run the same command with hydra.sweep.dir={hc.sweep.dir} to run the rest", file=sys.stderr)
        write_sweep_report(Path(hc.sweep.dir))
        stop.forward()
        raise SystemExit(stop.exit_code)
    return target_value(summary)


@dataclasses.dataclass(frozen=True)
class NotCompleted:
    """What a job that did not complete returns to its sweeper instead of a value. An optimizing
    sweeper must not read it as a number: precond's Optuna sweeper (``hydra/sweeper=optuna``, see
    ``hydra_plugins/precond_optuna``) reports the trial to Optuna as failed, with this text."""

    status: str
    reason: str

    def __str__(self) -> str:
        return f"the run {self.status} ({self.reason})" if self.reason else f"the run {self.status}"


def target_value(summary: dict) -> float | NotCompleted:
    """What a job returns to the sweeper: the final ``target.metric`` of a completed run, else why not."""
    if summary.get("status") != "completed":
        status = summary.get("status", "failed")
        reason = summary.get("error") or (f"at step {summary['steps']}" if summary.get("steps") is not None else "")
        return NotCompleted(status, str(reason))
    return summary.get(summary.get("target_metric", "val/loss"))


def discard_if_only_hydra_files(run_dir: Path) -> None:
    """Remove the dir Hydra made for a refused run when it holds nothing but Hydra's own files, so the
    corrected command finds no trace of it (a dir holding anything else is left as it is)."""
    try:
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
            shutil.rmtree(run_dir)
    except OSError:
        pass


def one_line(err: BaseException) -> str:
    """A Hydra or OmegaConf error (override syntax, unknown key, missing config) as one line."""
    lines = [line.strip() for line in str(err).split("Config search path:")[0].splitlines() if line.strip()]
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        lines += [line.strip() for line in str(cause).splitlines()[:1] if line.strip()]
    key = getattr(err, "full_key", None) or getattr(cause, "full_key", None)
    text = "; ".join(line for line in lines if not line.startswith(("full_key:", "object_type=", "reference_type=")))
    return f"{key}: {text}" if key else text


def os_error_line(err: OSError) -> str:
    """A failed write (full disk, read-only dir, a file where a dir should be, a name too long) as one line."""
    what = {errno.ENOSPC: "the disk is full: free space and re-run the same command (finished files are kept)",
            errno.EROFS: "the file system is read-only: pick a writable hydra.run.dir / hydra.sweep.dir",
            errno.EACCES: "no permission to write there: pick a writable hydra.run.dir / hydra.sweep.dir",
            errno.ENAMETOOLONG: "a file name is too long for the file system: shorten name or the overrides",
            errno.ENOTDIR: "a path component is a file, not a directory: pick another hydra.run.dir",
            errno.EEXIST: "a file stands where a directory should be: pick another hydra.run.dir"}
    where = f" ({err.filename})" if err.filename else ""
    return f"could not write{where}: {err.strerror or err} — {what.get(err.errno, 'check the output directory')}"


def refuse_group_paths(argv: list[str]) -> None:
    """A config-group choice names a file of the config search path (``experiment=adam_l2_vs_adamw``),
    never a path: ``..`` or an absolute path would make Hydra load a file from elsewhere."""
    groups = {d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or arg.startswith("-") or not (key in groups or key.startswith("hydra/")):
            continue  # not a group choice (a value override such as lr=0.1 or hydra.run.dir=...)
        for choice in value.strip("[]").split(","):
            parts = choice.strip().strip("'\"").split("/")
            if choice.strip().startswith("/") or ".." in parts:
                raise ConfigError(key, f"an option of conf/{key}/ by name", choice,
                                  "config-group choices load only from the config search path, not from paths")


def refuse_unsafe_names(argv: list[str]) -> None:
    """``name`` (and ``arm``) become part of the run dir, which Hydra creates before the run's own checks: a
    value that is not a safe file-name component (``../..``, ``a/b``) is refused here, before any directory
    exists, with the rule the full check applies later."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if sep and key in ("name", "arm") and "," not in value:  # a sweep list is checked per job by the sweeper
            rule_of(RunOptions, key).check(key, value.strip().strip("'\""))


def with_checked_sweeper(argv: list[str]) -> list[str]:
    """A plain multirun (``-m``, no experiment file and no sweeper named) gets ``hydra/sweeper=checked``:
    Hydra's basic sweeper with every job's config checked before the first job runs. Experiment files pick
    their own sweeper, and a sweeper named on the command line is kept."""
    multirun = any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in argv)
    chosen = any(a.lstrip("+~").startswith(("experiment=", "hydra/sweeper=")) for a in argv)
    return [*argv, "hydra/sweeper=checked"] if multirun and not chosen else argv


def main() -> None:
    """``precond-train``: Hydra's own errors (bad override, unknown key) and failed writes are one line each."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises instead of printing a block: see below
    try:
        refuse_group_paths(sys.argv[1:])
        refuse_unsafe_names(sys.argv[1:])
        refuse_null_groups(sys.argv[1:], CONF_DIR)
        sys.argv[1:] = with_checked_sweeper(settle_output_root(null_choices_as_deletions(sys.argv[1:])))
        with stop_between_runs():
            hydra_main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, StoppedBetweenRuns) as err:  # outside a run's step loop, e.g. between jobs
        signum = err.signum if isinstance(err, StoppedBetweenRuns) else signal.SIGINT
        if _current_sweep_dir is not None:
            write_sweep_report(_current_sweep_dir)
            print(f"interrupted between jobs: the table of the finished jobs is in {_current_sweep_dir}; re-run "
                  f"the same command with hydra.sweep.dir={_current_sweep_dir} to run the rest", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except (HydraException, OmegaConfBaseException) as err:
        line, hint = one_line(err), advice(str(err), sys.argv[1:], CONF_DIR)
        if hint:  # Hydra's own "use +key" would add a key that nothing reads
            line = re.sub(r"\s*To append to your config use \+\S+", "", line).rstrip(" .;")
        print(f"error: {line}" + (f" — {hint}" if hint else ""), file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None


#: modules whose exit handlers still have work to do (W&B's service, joblib's and submitit's workers)
_NEEDS_NORMAL_EXIT = ("wandb", "joblib", "submitit")


def cli() -> None:
    """The ``precond-train`` command: :func:`main`, then a quick exit.

    Python's normal shutdown spends about 0.5 s tearing torch down, as long as a short sweep's
    training. Every file a run writes is complete by then (written atomically and closed),
    so the process flushes its streams and log handlers and ends with ``os._exit``, unless a
    library that still works at exit was loaded (:data:`_NEEDS_NORMAL_EXIT`). ``main`` stays
    a plain function for callers in the same process (the tests).
    """
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    if any(name in sys.modules for name in _NEEDS_NORMAL_EXIT) or not (code is None or is_int(code)):
        raise SystemExit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    cli()
