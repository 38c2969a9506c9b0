"""Run records: plain files in the run directory, and optionally Weights & Biases.

Files every run leaves (docs/theory.md §6):

* ``config.yaml`` — the resolved configuration (written by the entry point);
* ``metrics.jsonl`` — one JSON object per logged step (``step``, ``train/loss``,
  ``val/loss``, ``val/acc``, ``lr``, ``time/train_s``, ...), flushed per line so
  a crash loses nothing already logged;
* ``summary.json`` — final metrics and ``status: completed | diverged | failed | interrupted``;
* ``checkpoint.pt`` — while a run is unfinished: what it needs to resume (:mod:`precond.run.checkpoint`).

It also owns a run's provenance (git commit, versions, device) and the one list
of override keys that do not identify a run.

This is the only module that imports ``wandb``, and only when a W&B sink is
requested. Without an API key, ``online`` falls back to ``offline`` (said once
per process). The W&B run is finished also when training raises.
"""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from precond.errors import ConfigError
from precond.metrics import higher_is_better
from precond.settings import Choice, Flag, Seq, Settings, Text, is_int, is_number, setting

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")
#: metrics whose W&B summary holds the best value (min for losses, max for accuracies) and the last
BEST_TRACKED = ("train/loss", "val/loss", "train/batch_loss", "train/acc", "val/acc")
_said_offline = False


@dataclass(frozen=True)
class WandbSettings(Settings):
    """The ``logger`` config group: where and how to log to W&B.

    ``mode`` is ``online | offline | disabled``; ``logger=none`` is ``disabled`` (plain
    files only, wandb never imported). ``group``, ``name``, ``job_type`` and ``notes`` left
    null get precond's defaults (group: the sweep, or ``name`` for a single run; name: the
    run's identifying overrides; job_type: ``train``); ``tags`` are added to precond's own
    (preconditioner, regularization, normalization, model, data).
    """

    mode: str = setting(Choice(WANDB_MODES), "offline",
                        fix="offline needs no account; logger=none logs plain files only")
    project: str = setting(Text(name_like=True, max_len=128), "precond", doc="W&B project name")
    entity: Optional[str] = setting(Text(optional=True), None)
    group: Optional[str] = setting(Text(optional=True), None)
    name: Optional[str] = setting(Text(optional=True), None)
    # W&B's own limit, checked before the run dir exists: a tag of 1-64 characters
    tags: tuple = setting(Seq(Text(min_len=1, max_len=64), 0, 64), (), fix="e.g. logger.tags=[baseline,v2]")
    job_type: Optional[str] = setting(Text(optional=True), None, doc="default: train (summary for a sweep's report)")
    notes: Optional[str] = setting(Text(optional=True, max_len=10_000), None, doc="a free-text description")
    log_model: bool = setting(Flag(), True, doc="the final model.pt as a W&B artifact (type model)")
    log_report: bool = setting(Flag(), True, doc="a sweep's report files as a W&B artifact (type report)")


def _jsonable(value: Any) -> Any:
    """Plain JSON values; non-finite floats become None (JSON has no NaN)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def has_wandb_credentials() -> bool:
    """True when an API key is in ``WANDB_API_KEY`` or ``~/.netrc`` for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``online`` without credentials becomes ``offline``, announced once per process."""
    global _said_offline
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode must be one of {list(WANDB_MODES)}, got '{mode}'")
    if mode == "online" and not has_wandb_credentials():
        if not _said_offline:
            log.warning("no W&B API key found (WANDB_API_KEY or ~/.netrc): logging offline; "
                        "upload later with `wandb sync <run_dir>/wandb/offline-run-*`")
            _said_offline = True
        return "offline"
    return mode


def yaml_text(plain: Any) -> str:
    """Plain values (dicts, lists, scalars) as block YAML in their own key order, with libyaml's
    emitter where PyYAML has it (~10× faster than OmegaConf's pure-Python dump; a sweep writes
    one per job). ``yaml.safe_load`` reads back the same values."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(plain, Dumper=dumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a reader
    (or a crash, or a full disk) sees the old file or the new one, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``run_dir/summary.json`` atomically (NaN/inf → null); returns what was written."""
    clean = json.loads(json.dumps(summary, default=str), parse_constant=lambda _: None)
    clean = {k: _jsonable(v) for k, v in clean.items()}
    write_text_atomically(Path(run_dir) / "summary.json", json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return clean


class RunLog:
    """Writes ``metrics.jsonl`` and ``summary.json`` in ``run_dir``; mirrors to W&B when asked.

    Use as a context manager: leaving it with an exception writes a ``failed``
    summary (unless one was written) and finishes the W&B run with exit code 1.
    """

    def __init__(self, run_dir: str | Path, config: dict, wandb_settings: Optional[WandbSettings] = None,
                 wandb_id: Optional[str] = None):
        self.run_dir = Path(run_dir)
        #: the W&B run id: a resumed run passes its checkpoint's id and logs into the same W&B run
        self.wandb_id = wandb_id or secrets.token_hex(4)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._metrics = open(self.metrics_path, "a", encoding="utf-8")
        self._summary_written = False
        #: the W&B exit code when the context ends without an exception (1: the run did not complete)
        self.exit_code = 0
        self._wandb_run = None
        self._log_model = False
        if wandb_settings is not None and wandb_settings.mode != "disabled":
            self._wandb_run = self._start_wandb(config, wandb_settings)

    def _start_wandb(self, config: dict, s: WandbSettings):
        import wandb

        mode = resolve_wandb_mode(s.mode)
        run = wandb.init(
            project=s.project, entity=s.entity, group=s.group, name=s.name, tags=list(s.tags),
            job_type=s.job_type or "train", notes=s.notes, config=config, dir=str(self.run_dir), mode=mode,
            reinit="create_new", id=self.wandb_id, resume="allow",
        )
        run.define_metric("time/train_s", summary="max")  # training seconds: an x-axis on the dashboard
        for metric in BEST_TRACKED:  # the summary holds the best and the last value of each
            run.define_metric(metric, summary=("max" if higher_is_better(metric) else "min") + ",last")
        self._log_model = s.log_model
        return run

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one record (must contain ``step``) to metrics.jsonl and W&B."""
        record = {k: _jsonable(v) for k, v in metrics.items()}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k != "step" and v is not None},
                                step=int(record["step"]))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json (atomically) and the W&B run summary."""
        clean = write_summary(self.run_dir, summary)
        self._summary_written = True
        if self._wandb_run is not None:
            for k, v in clean.items():  # the BEST_TRACKED metrics keep W&B's {best, last}: not overwritten
                if k not in BEST_TRACKED and (isinstance(v, (str, bool)) or is_number(v) or v is None):
                    self._wandb_run.summary[k] = v

    def log_model(self, path: Path, metadata: dict[str, Any]) -> None:
        """The final weights as a W&B artifact (type ``model``), unless ``logger.log_model=false``."""
        if self._wandb_run is None or not self._log_model:
            return
        import wandb

        artifact = wandb.Artifact(f"model-{self.wandb_id}", type="model",
                                  metadata={k: _jsonable(v) for k, v in metadata.items()})
        artifact.add_file(str(path))
        self._wandb_run.log_artifact(artifact)

    def close(self, exit_code: int = 0) -> None:
        self._metrics.close()
        if self._wandb_run is not None:
            self._wandb_run.finish(exit_code=exit_code)
            self._wandb_run = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and not self._summary_written:
            self.write_summary({"status": "failed", "error": f"{exc_type.__name__}: {exc}"})
        self.close(exit_code=1 if exc is not None else self.exit_code)


def log_sweep_summary(settings: WandbSettings, sweep_dir: str | Path, tables: dict, images: dict,
                      report_files: list[Path] = ()) -> str:
    """One W&B run (``job_type=summary``) in the sweep's group holding the report: ``tables`` maps a
    name to ``(columns, rows)`` (logged as ``wandb.Table``), ``images`` a name to a PNG path, and
    ``report_files`` go into one artifact of type ``report`` (unless ``logger.log_report=false``).
    Returns the run's id."""
    import wandb

    sweep_dir = Path(sweep_dir)
    run = wandb.init(project=settings.project, entity=settings.entity, group=settings.group or sweep_dir.name,
                     name=f"{sweep_dir.name}/summary", job_type="summary", tags=[*settings.tags, "summary"],
                     notes=settings.notes, config={"sweep_dir": str(sweep_dir)}, dir=str(sweep_dir),
                     mode=resolve_wandb_mode(settings.mode), reinit="create_new")
    try:
        if tables:
            run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])
                     for name, (columns, rows) in tables.items()})
        if any(Path(path).exists() for path in images.values()):
            run.log({name: wandb.Image(str(path)) for name, path in images.items() if Path(path).exists()})
        present = [Path(f) for f in report_files if Path(f).is_file()]
        if settings.log_report and present:
            artifact = wandb.Artifact(f"report-{_artifact_name(sweep_dir.name)}", type="report",
                                      metadata={"sweep_dir": str(sweep_dir)})
            for path in present:
                artifact.add_file(str(path), name=path.name)
            run.log_artifact(artifact)
    finally:
        run.finish()
    return run.id


def _artifact_name(text: str) -> str:
    """W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:120]


# --- keys that change no result --------------------------------------------------------------

#: config keys that change no result of a run (neither its training nor any number it records): the one
#: list behind every "these keys do not matter" rule (run-dir reuse, labels, packs)
RESULT_FREE_KEYS = ("logger", "threads", "progress", "progress_every_s", "checkpoint_every", "checkpoint_every_s",
                    "paths", "dataset.root", "dataset.cache_dir", "dataset.download")


def is_under(key: str, keys) -> bool:
    """True when dotted ``key`` is one of ``keys`` or lies below one (``paths.data_root`` under ``paths``)."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def without_keys(config: dict, keys) -> dict:
    """A copy of a nested config without the dotted ``keys``."""
    def strip(node: dict, prefix: str) -> dict:
        out = {}
        for name, value in node.items():
            dotted = f"{prefix}{name}"
            if dotted in keys:
                continue
            out[name] = strip(value, dotted + ".") if isinstance(value, dict) else value
        return out

    return strip(config, "")

#: override keys that do not identify a run: seeds are averaged over, the experiment is the whole
#: sweep, and the result-free keys change nothing. Used by the sweep report's labels and W&B run names.
NON_IDENTIFYING_KEYS = ("seed", "experiment", *RESULT_FREE_KEYS)


def identifying_overrides(overrides: list[str]) -> list[str]:
    """``key=value`` overrides minus ``hydra.*`` and :data:`NON_IDENTIFYING_KEYS` (and their sub-keys)."""
    out = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~").replace("/", ".")
        if not is_under(key, ("hydra", *NON_IDENTIFYING_KEYS)):
            out.append(override)
    return out


# --- the run directory: never shared, never appended to by another run -------------------------

#: statuses of a run that is over: re-running it would give the same result, so it is not redone
FINISHED = ("completed", "diverged")


class RunDirInUse(ConfigError):
    """The run directory belongs to another run (different config, or a live process holds it)."""


def _config_differences(old: dict, new: dict) -> list[str]:
    old, new = without_keys(old, RESULT_FREE_KEYS), without_keys(new, RESULT_FREE_KEYS)
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``path`` up to ``step`` (those a checkpoint at ``step`` has seen) and drop
    later or damaged lines, atomically; returns the number of records dropped."""
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    write_text_atomically(path, "".join(kept))
    return dropped


def _say_lost_history(metrics: Path, checkpoint: dict) -> None:
    """A metrics.jsonl that ends before the checkpoint's last evaluation lost records (a disk that
    filled, a file edited by hand): say which steps are missing; the run still resumes."""
    last_eval = (checkpoint["loop"].get("last") or {}).get("step")
    logged = []
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                logged.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
    if is_int(last_eval) and (not logged or max(logged) < last_eval):
        since = f"after step {max(logged)}" if logged else "(metrics.jsonl is missing or empty)"
        log.warning("%s ends before the checkpoint's last evaluation at step %d: the records %s up to step %d "
                    "are lost; the run resumes from step %d and logs what follows", metrics, last_eval, since,
                    last_eval, checkpoint["step"])


#: the files a run writes that a later run must never append to or overwrite
RUN_FILES = ("metrics.jsonl", "summary.json", "model.pt", "optimizer.pt")


class RunDirectory:
    """Claim ``run_dir`` for one run of ``config`` (a plain resolved dict) for the life of the context.

    * another live process holding the dir (an advisory ``flock`` on ``run_dir/.lock``,
      released by the kernel when that process dies) → :class:`RunDirInUse`;
    * a ``config.yaml`` with a different config → :class:`RunDirInUse`, naming the keys;
    * the same config with a finished summary (``completed`` or ``diverged``) → :attr:`finished`
      holds that summary (the caller reports it and does not redo the run);
    * the same config, unfinished, with a checkpoint → :attr:`checkpoint` holds it; records
      logged after the checkpoint's step are dropped from ``metrics.jsonl`` (the resumed run
      logs them again) and the old summary is kept as ``summary.json.attempt<N>``;
    * the same config, unfinished, no usable checkpoint → the run starts over; its old
      ``metrics.jsonl`` and ``summary.json`` are kept as ``*.attempt<N>`` (a damaged checkpoint
      as ``checkpoint.pt.attempt<N>``); nothing is appended to a file of another attempt.
    """

    def __init__(self, run_dir: str | Path, config: dict):
        self.path, self.config = Path(run_dir), config
        self.finished: Optional[dict] = None
        self.checkpoint: Optional[dict] = None
        self._lock = None

    def __enter__(self) -> RunDirectory:
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RunDirInUse("hydra.run.dir", "a directory no other live run is using", str(self.path),
                              "another process is training in it; pick another hydra.run.dir") from None
        try:
            self._check_existing()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _check_existing(self) -> None:
        import yaml

        from precond.run.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint

        config_path = self.path / "config.yaml"
        if not config_path.exists():
            self._set_aside_orphans()
            return
        try:
            old = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            old = None
        if not isinstance(old, dict) or _config_differences(old, self.config):
            keys = _config_differences(old, self.config) if isinstance(old, dict) else ["config.yaml unreadable"]
            raise RunDirInUse("hydra.run.dir", "a new directory or one holding this same run", str(self.path),
                              f"it holds a run whose config differs at {keys}; pick another hydra.run.dir")
        summary = self._read_summary()
        if summary is not None and summary.get("status") in FINISHED:
            if not (self.path / "model.pt").exists():
                log.warning("%s: the finished run's model.pt is missing: running it again (its files are kept as "
                            "*.attempt<N>)", self.path)
            else:
                self.finished = summary
                return
        attempt = self._next_attempt()
        try:
            self.checkpoint = load_checkpoint(self.path, steps=self.config.get("steps"))
        except CheckpointError as err:
            log.warning("%s: starting the run over", err)
            (self.path / CHECKPOINT).replace(self.path / f"{CHECKPOINT}.attempt{attempt}")
        if self.checkpoint is not None:
            metrics = self.path / "metrics.jsonl"
            if metrics.exists():
                dropped = truncate_metrics(metrics, int(self.checkpoint["step"]))
                if dropped:
                    log.info("%s: %d records after the checkpoint's step %d dropped (they are logged again)",
                             metrics, dropped, self.checkpoint["step"])
            _say_lost_history(metrics, self.checkpoint)
            names = ("summary.json",)
        else:
            names = ("metrics.jsonl", "summary.json")
        for name in names:
            if (self.path / name).exists():
                (self.path / name).replace(self.path / f"{name}.attempt{attempt}")

    def _set_aside_orphans(self) -> None:
        """Run files without the ``config.yaml`` that says which run wrote them (deleted by hand, or a copy gone
        wrong) belong to no run this one can continue: they are kept as ``*.attempt<N>``, never appended to."""
        orphans = [name for name in (*RUN_FILES, "checkpoint.pt") if (self.path / name).exists()]
        if orphans:
            attempt = self._next_attempt()
            log.warning("%s holds %s but no config.yaml: kept as *.attempt%d, the run starts in a clean dir",
                        self.path, ", ".join(orphans), attempt)
            for name in orphans:
                (self.path / name).replace(self.path / f"{name}.attempt{attempt}")

    def _next_attempt(self) -> int:
        earlier = [p.name.rsplit(".attempt", 1)[1] for p in self.path.glob("*.attempt*")]
        return 1 + max((int(n) for n in earlier if n.isdigit()), default=0)

    def _read_summary(self) -> Optional[dict]:
        try:
            summary = json.loads((self.path / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None
