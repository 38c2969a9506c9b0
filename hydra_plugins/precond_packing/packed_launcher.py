"""``hydra/launcher=packed``: a Hydra launcher that trains a sweep's stackable jobs as packs.

For every job it builds the job's config cheaply (:class:`JobComposer`: one compose per
distinct set of config-group choices, value overrides applied to a copy), groups the jobs
by :func:`precond.sweep.pack_rules.pack_key` and trains each group of two or more in one process as
one stacked model (:func:`precond.sweep.pack_jobs.run_pack`). Jobs that cannot be stacked run one by
one as with the basic launcher; the launcher says why, once per reason. Every job gets the
run dir, ``.hydra/`` files, callbacks and ``JobReturn`` it would get from the basic launcher,
so sweepers (``hydra/sweeper=tuned``, Optuna) and the report work unchanged.

This file is only the Hydra glue; the mathematics is :mod:`precond.sweep.pack_training`.
"""
# no `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations
import logging
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    _save_config,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("precond")


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.precond_packing.packed_launcher.PackedLauncher"
    #: at most this many jobs in one pack (null: no limit); lower it when a pack does not fit in memory
    max_pack: Optional[Any] = None


ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="precond")


SUBDIR = "hydra.sweep.subdir"


class JobComposer:
    """A job's config as ``load_sweep_config`` would compose it, at the cost of a copy.

    Overrides that pick config-group options (or touch ``hydra``) change what is composed;
    those are composed once per distinct combination. The other overrides set values, which
    Hydra applies after composition: they are applied here to a copy of the composed config
    with Hydra's own function, and the fields Hydra derives from the overrides are set. The copy
    is an unpickling of the composed config (OmegaConf's own pickling: nodes, types, flags), about
    0.6 ms where ``copy.deepcopy`` of a tuned experiment's config takes ~9 ms.
    """

    def __init__(self, config_loader, master_config: DictConfig):
        self.loader = config_loader
        self.master = master_config
        self.parser = OverridesParser.create()
        self.composed: dict = {}
        self.validated: dict = {}
        self.parsed: dict = {}
        self.compose = config_loader.load_sweep_config  # Hydra's own (full) composition

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list) -> DictConfig:
        """Drop-in for the config loader's ``load_sweep_config``: cheap for this sweep's master config.

        The sweeper calls it for every job of a batch to check the batch before the launch
        (``validate_batch_is_legal``, which only reads what it gets); the launcher then takes that
        same config (:meth:`take`) instead of composing the job a second time.
        """
        if master_config is not self.master:
            return self.compose(master_config, sweep_overrides)
        cfg = self(sweep_overrides)
        self.validated[tuple(sweep_overrides)] = cfg
        return cfg

    def take(self, overrides: list) -> DictConfig:
        """The job's config for the launch: the one composed for the sweeper's check, or a new one."""
        return self.validated.pop(tuple(overrides), None) or self(overrides)

    def _parse(self, line: str):
        """Hydra's parse of one override line, once per distinct line (the grammar parser takes ~0.5 ms
        a line, and a tuned batch repeats its arm, stage and fixed overrides in every job)."""
        if line not in self.parsed:
            self.parsed[line] = self.parser.parse_overrides([line])[0]
        return self.parsed[line]

    def _is_composition(self, override) -> bool:
        if override.key_or_group == SUBDIR:  # a value: where the job's files go (the tuned sweep sets it)
            return False
        return (override.is_hydra_override() or override.package is not None
                or self.loader.repository.group_exists(override.key_or_group))

    def __call__(self, overrides: list) -> DictConfig:
        """The job's config, as Hydra's ``load_sweep_config(master, overrides)`` composes it."""
        parsed = [self._parse(line) for line in overrides]
        shaping = [o for o in parsed if self._is_composition(o)]
        values = [o for o in parsed if not self._is_composition(o)]
        key = tuple(o.input_line for o in shaping)
        if key not in self.composed:  # kept pickled: unpickling is a full copy ~10× cheaper than deepcopy
            self.composed[key] = pickle.dumps(self.compose(self.master, list(key)))
        cfg = pickle.loads(self.composed[key])
        ConfigLoaderImpl._apply_overrides_to_config([o for o in values if o.key_or_group != SUBDIR], cfg)
        app = [o for o in parsed if not o.is_hydra_override()]
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            for o in values:
                if o.key_or_group == SUBDIR:
                    cfg.hydra.sweep.subdir = o.value()
            cfg.hydra.overrides.task = [o.input_line for o in app]
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
        OmegaConf.copy_cache(from_config=self.master, to_config=cfg)
        return cfg


class PackLogFiles(logging.Handler):
    """The pack's log lines, appended to every member's ``train.log`` (a job alone gets its own lines;
    a pack's lines are about all its members, and each names the job it concerns).

    Buffered: the lines go to the files every :attr:`EVERY_S` seconds and when the pack ends, not
    with a write and a flush per line per member (a pack of 200 jobs logs ~700 lines: 140 000
    writes). A process killed mid-pack loses at most that many seconds of log lines.
    """

    EVERY_S = 2.0

    def __init__(self, paths: list):
        super().__init__()
        self.paths, self.lines, self.last = paths, [], time.monotonic()
        self.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record) + "\n")
            if time.monotonic() - self.last >= self.EVERY_S:
                self.flush()
        except Exception:  # logging's rule: a failing handler reports, never raises into the caller
            self.handleError(record)

    def flush(self) -> None:
        text, self.lines, self.last = "".join(self.lines), [], time.monotonic()
        if text:
            for path in self.paths:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(text)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            super().close()


def _place(cfg: DictConfig, idx: int) -> Path:
    """Number the job and set its output dir, as the basic launcher and ``run_job`` do."""
    with open_dict(cfg):
        cfg.hydra.job.id = idx
        cfg.hydra.job.num = idx
    output_dir = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
    return output_dir


def _task_config(cfg: DictConfig) -> DictConfig:
    """The job's config without its ``hydra`` node, as ``run_job`` gives the task (which deep-copies
    the whole config first: the hydra node is most of it, and a copy of the rest is enough)."""
    task = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    task._set_flag("struct", cfg._get_flag("struct"))
    return task


class PackedLauncher(Launcher):
    def __init__(self, max_pack: Optional[int] = None) -> None:
        super().__init__()
        from precond.errors import ConfigError
        from precond.settings import Int

        try:
            Int(lo=2, optional=True).check("hydra.launcher.max_pack", max_pack, "null: no limit")
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        self.max_pack = max_pack
        self.config: Optional[DictConfig] = None
        self.task_function = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.composer = JobComposer(hydra_context.config_loader, config)
        # Hydra's sweepers compose every job once to validate the batch, then the launcher composes
        # it again: ~0.15 s each. Both go through the config loader, which now composes each
        # distinct set of config-group choices once and copies it for the jobs.
        hydra_context.config_loader.load_sweep_config = self.composer.load_sweep_config

    def launch(self, job_overrides, initial_job_idx: int):
        from precond.run.config import resolve
        from precond.sweep.pack_rules import pack_key

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = [self.composer.take(list(o)) for o in job_overrides]
        for pos, cfg in enumerate(configs):  # numbered and placed first: the task may interpolate its run dir
            _place(cfg, initial_job_idx + pos)
        tasks = [_task_config(cfg) for cfg in configs]
        resolved: list = [None] * len(configs)  # each job resolved once: to group it, then to run it
        units: dict = {}  # pack key (or a job's own key) → job positions, in order of first appearance
        reasons: dict = {}
        for pos, cfg in enumerate(configs):
            try:
                resolved[pos] = resolve(cfg)
                key, reason = pack_key(resolved[pos])
            except Exception as err:  # the job fails alone, with the entry point's message
                key, reason = None, f"its config does not resolve ({type(err).__name__})"
            if cfg.hydra.job.chdir:
                key, reason = None, "hydra.job.chdir=true gives each job its own working directory"
            if key is None:
                reasons.setdefault(reason, []).append(pos)
                key = ("alone", pos)
            units.setdefault(key, []).append(pos)
        for reason, positions in reasons.items():
            log.info("%d job(s) train one at a time: %s", len(positions), reason)
        chunks = []
        for positions in units.values():
            size = self.max_pack or len(positions)
            chunks += [positions[i:i + size] for i in range(0, len(positions), size)]
        log.info("Launching %d jobs: %d pack(s), %d alone", len(configs), sum(len(c) > 1 for c in chunks),
                 sum(len(c) == 1 for c in chunks))
        returns: list = [None] * len(configs)
        for chunk in sorted(chunks):
            if len(chunk) == 1:
                returns[chunk[0]] = self._run_alone(configs[chunk[0]], initial_job_idx + chunk[0])
            else:
                for pos, ret in zip(chunk, self._run_pack([configs[p] for p in chunk], [tasks[p] for p in chunk],
                                                          [resolved[p] for p in chunk])):
                    returns[pos] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _run_alone(self, cfg: DictConfig, idx: int) -> JobReturn:
        """One job as the basic launcher runs it (already numbered by :meth:`launch`)."""
        log.debug("\t#%d : %s", idx, " ".join(filter_overrides(cfg.hydra.overrides.task)))  # hydra.verbose shows it
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def _run_pack(self, cfgs: list, tasks: list, resolved: list) -> list:
        """The jobs (placed by :meth:`launch`: numbered, run dirs set; ``resolved``: their task configs
        resolved) trained as one pack, with the files, callbacks and returns of :func:`run_job`."""
        from precond.run.entry import JobInfo
        from precond.run.files import yaml_text
        from precond.sweep.pack_jobs import launch_pack

        callbacks = self.hydra_context.callbacks
        jobs, logs = [], []
        launcher_hydra_config = HydraConfig.instance().cfg  # restored after the pack, as run_job does
        for cfg, plain in zip(cfgs, resolved):
            log.debug("\t#%d : %s (packed)", cfg.hydra.job.num, " ".join(filter_overrides(cfg.hydra.overrides.task)))
            output_dir = Path(cfg.hydra.runtime.output_dir)
            if cfg is cfgs[0]:
                # HydraConfig holds the pack's first job while it trains (``run_job`` sets each job's: a copy
                # of the hydra node per job was a third of a large pack's setup, and nothing in a pack reads
                # it per job: each job's own hydra node goes to it as its JobInfo)
                HydraConfig.instance().set_config(cfg)
            output_dir.mkdir(parents=True, exist_ok=True)
            if cfg.hydra.output_subdir is not None:
                hydra_output = output_dir / str(cfg.hydra.output_subdir)
                hydra_output.mkdir(parents=True, exist_ok=True)
                # config.yaml and hydra.yaml (unresolved) through OmegaConf's pure-Python dump were most of
                # a job's setup: the same YAML through libyaml
                # (one conversion of the whole config, split: config.yaml is the task, hydra.yaml the hydra node)
                unresolved = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
                hydra_node = {"hydra": unresolved.pop("hydra")}
                for name, node in (("config.yaml", unresolved), ("hydra.yaml", hydra_node)):
                    (hydra_output / name).write_text(yaml_text(node), encoding="utf-8")
                _save_config(cfg.hydra.overrides.task, "overrides.yaml", hydra_output)
            logs.append(output_dir / "train.log")
            logs[-1].touch()
            callbacks.on_job_start(config=cfg, task_function=self.task_function)
            jobs.append((plain, JobInfo.of(cfg.hydra)))  # a job that does not resolve never joins a pack
        handler = PackLogFiles(logs)
        logging.getLogger().addHandler(handler)
        try:
            values = launch_pack(jobs)
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
            HydraConfig.instance().cfg = launcher_hydra_config
        returns = []
        for cfg, task, value in zip(cfgs, tasks, values):
            ret = JobReturn(overrides=list(cfg.hydra.overrides.task), cfg=task, hydra_cfg=cfg,
                            working_dir=os.getcwd(), task_name=str(cfg.hydra.job.name))
            ret.return_value, ret.status = value, JobStatus.COMPLETED
            callbacks.on_job_end(config=cfg, job_return=ret)
            returns.append(ret)
        return returns
