"""The config's schema: a resolved config → typed settings, checked in full before anything is built.

The top level is :class:`RunOptions` (keys the run itself owns) plus :class:`LoopSettings` (the
loop's keys, also top-level) plus one node per config group. Each group option names its typed
settings class with ``_target_``; only registered settings classes may be named, so a config
file can choose a class but never run code. Every key of every level is checked by its field's
rule (:mod:`precond.settings`), an unknown key is refused at every level, and the rules that join
groups run once in :func:`precond.combinations.check_combinations`. A :class:`ConfigError`
names the full key (``model.widths``, ``preconditioner.base_hyper.momentum``).

This module and the entry point are the only ones that see a DictConfig.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from precond.combinations import check_combinations
from precond.curvature import CurvatureSettings
from precond.data import Dataset, DataSpec
from precond.errors import ConfigError
from precond.extensions import load_extensions
from precond.models import ModelSpec
from precond.normalization import Normalization, standardize_inputs
from precond.optim import ComposedOptimizer, build_optimizer
from precond.preconditioners import PreconditionerSettings
from precond.regularizers import RegularizationSpec
from precond.run.files import WandbSettings
from precond.run.loop import LoopSettings, loss_function
from precond.run.monitors import CurvatureMonitor, Monitor, RegularizationMonitor
from precond.run.paths import Paths
from precond.schedules import ScheduleSpec
from precond.settings import (
    LEARNING_RATE,
    Choice,
    Flag,
    Rule,
    Settings,
    Text,
    refuse_unknown_keys,
    rule_of,
    setting,
)
from precond.threads import THREADS_ENV, ThreadCount

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: config group → (base class of its settings, whether the node may be null)
GROUPS: dict[str, tuple[type[Settings], bool]] = {
    "model": (ModelSpec, False),
    "dataset": (DataSpec, False),
    "preconditioner": (PreconditionerSettings, False),
    "regularization": (RegularizationSpec, False),
    "normalization": (Normalization, False),
    "schedule": (ScheduleSpec, False),
    "logger": (WandbSettings, False),
    "curvature": (CurvatureSettings, True),
    "paths": (Paths, False),
}


@dataclasses.dataclass(frozen=True)
class DeviceName(Rule):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

    def expected(self) -> str:
        return "auto, cpu, cuda or cuda:N"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", value) is not None

    def refused(self) -> list[Any]:
        return [3, "tpu"]


@dataclasses.dataclass(frozen=True)
class RunOptions(Settings):
    """The top-level keys a run owns (the loop's own top-level keys are :class:`LoopSettings`)."""

    name: str = setting(Text(name_like=True), "default", doc="experiment name: W&B group, part of the sweep dir")
    stage: Optional[str] = setting(Choice(("tuning", "confirmation"), optional=True), None,
                                   doc="set by hydra/sweeper=tuned")
    arm: Optional[str] = setting(Text(name_like=True, optional=True), None, doc="set by hydra/sweeper=tuned")
    device: str = setting(DeviceName(), "auto")
    dtype: str = setting(Choice(tuple(DTYPES)), "float32")
    lr: float = setting(LEARNING_RATE, 1e-3, doc="learning rate η", fix="e.g. lr=0.01")
    channels_last: bool = setting(Flag(), False)
    compile: bool = setting(Flag(), False)
    threads: Any = setting(ThreadCount(), "auto", doc="CPU threads: auto (1 for a small step, else every core "
                           "this process may use) or a count", fix=f"threads=auto or a count; {THREADS_ENV} in "
                           "the environment sets the default")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything a run needs, checked in full before any data or model is built."""

    options: RunOptions
    loop: LoopSettings
    model: ModelSpec
    dataset: DataSpec
    preconditioner: PreconditionerSettings
    regularization: RegularizationSpec
    normalization: Normalization
    schedule: ScheduleSpec
    logger: WandbSettings
    curvature: Optional[CurvatureSettings]
    paths: Paths
    device: torch.device

    @property
    def lr(self) -> float:
        return self.options.lr

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.options.dtype]


def rule_at(settings: RunSettings, dotted: str) -> Rule:
    """The rule that checks config key ``dotted`` (``model.widths``, ``target.value``,
    ``preconditioner.base_hyper.momentum``) in a run with these settings: the schema, asked directly."""
    head, *rest = dotted.split(".")
    if head in GROUPS:
        owner, (head, *rest) = getattr(settings, head), rest
    else:
        owner = settings.options if head in RunOptions.keys() else settings.loop
    while rest:
        owner, (head, *rest) = owner.part(head), rest
    return rule_of(type(owner), head)


def top_level_keys() -> list[str]:
    return [*RunOptions.keys(), *LoopSettings.keys(), *GROUPS]


def resolve(cfg: DictConfig) -> dict:
    """The config as plain containers with every interpolation resolved; a failure names its key."""
    try:
        plain = {}
        for key in cfg:
            if key == "hydra":  # Hydra's own node (present while a sweeper checks jobs) is not the run's
                continue
            value = cfg[key]
            plain[key] = (OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
                          if isinstance(value, (DictConfig, ListConfig)) else value)
        return plain
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        message = str(err).split("\n")[0]
        raise ConfigError(key, "a value that resolves", None, f"{message} (check the interpolation or set the "
                          "environment variable it reads)") from None


def _registered(base: type) -> dict[str, type]:
    """Every settings class derived from ``base``, by its import path (what ``_target_`` may name)."""
    found, todo = {}, [base]
    while todo:
        cls = todo.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        todo += cls.__subclasses__()
    return found


def build_group(node: str, value: Any) -> Optional[Settings]:
    """The settings object of config group ``node`` from its plain mapping (``_target_`` + keys)."""
    base, nullable = GROUPS[node]
    load_extensions()  # installed packages' options join the registered settings classes
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise ConfigError(node, f"a {node} option (a mapping with _target_)", value, f"pick one with {node}=<option>")
    values = dict(value)
    target = values.pop("_target_", None)
    known = _registered(base)
    if len(known) > 1:  # an abstract base (ModelSpec, ...): only its subclasses are options
        known = {k: v for k, v in known.items() if v is not base}
    if target is None and nullable:  # keys of a deleted option (~curvature under an experiment that sets them)
        raise ConfigError(node, f"a {node} option, or null with none of its keys set", value,
                          f"select an option ({node}=<option>), or keep it and turn it off with {node}.enabled=false")
    if target not in known:
        choices = sorted(known)
        raise ConfigError(f"{node}._target_", f"one of the settings classes {choices}", target,
                          f"a {node} option names the class that holds its keys")
    try:
        return known[target].from_mapping(values)
    except ConfigError as err:
        raise err.within(node) from None


def settings_from_plain(plain: dict) -> RunSettings:
    """Check a resolved config in full; raises ConfigError naming the key."""
    options, loop, groups = checked_parts(plain)
    return RunSettings(options=options, loop=loop, device=resolve_device(options.device), **groups)


def check_job_config(cfg: DictConfig) -> None:
    """Every check a run makes of its config before it writes anything, except resolving the device (a sweep
    checked on a login node may send its jobs to machines with GPUs): for a sweeper, before any job runs."""
    checked_parts(resolve(cfg))


def checked_parts(plain: dict) -> tuple:
    """``(options, loop, groups)`` of a resolved config, every key checked and the groups' joint rules applied."""
    refuse_unknown_keys(plain, top_level_keys(), "the top level of the config")
    # groups first: the top-level lr interpolates preconditioner.lr, whose key the error should name
    groups = {node: build_group(node, plain.get(node)) for node in GROUPS}
    options = RunOptions.from_mapping({k: v for k, v in plain.items() if k in RunOptions.keys()})
    loop = LoopSettings.from_mapping({k: v for k, v in plain.items() if k in LoopSettings.keys()})
    check_combinations(preconditioner=groups["preconditioner"], regularization=groups["regularization"],
                       normalization=groups["normalization"], curvature=groups["curvature"], loop=loop,
                       data=groups["dataset"], model=groups["model"], schedule=groups["schedule"], options=options)
    return options, loop, groups


def settings_from_config(cfg: DictConfig) -> RunSettings:
    """:func:`settings_from_plain` of the resolved ``cfg``."""
    return settings_from_plain(resolve(cfg))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "a CUDA GPU for device=cuda", "none available", "use device=auto or device=cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError("device", f"cuda:N with N < {torch.cuda.device_count()}", name)
    return torch.device(name)


def build_data(settings: RunSettings) -> Dataset:
    """The dataset, resident on the run's device (NHWC images with ``channels_last``)."""
    try:
        data = settings.dataset.build()
    except ConfigError as err:  # missing files: known only when they are read
        raise err.within("dataset") from None
    if settings.normalization.standardizes_inputs:
        data = standardize_inputs(data)
    return data.to(settings.device, settings.dtype, channels_last=settings.options.channels_last)


def build_model(settings: RunSettings, data: Dataset) -> torch.nn.Module:
    """The model with the run's seed, dtype and device; NHWC weights with ``channels_last``; its forward
    compiled with ``compile`` (``nn.Module.compile``: the state-dict keys stay those of the model)."""
    torch.manual_seed(settings.loop.seed)
    model = settings.model.build(data.in_shape, data.num_outputs, settings.normalization.name)
    model = model.to(device=settings.device, dtype=settings.dtype)
    if settings.options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.options.compile:
        model.compile()
    return model


def build_optimizer_from_settings(settings: RunSettings, model: torch.nn.Module) -> ComposedOptimizer:
    """The composed optimizer of the run's preconditioner and regularization (both already checked)."""
    spec, reg = settings.preconditioner, settings.regularization
    extra = {"model": model} if spec.NAME == "bnp" else {}
    reg_kwargs = reg.optimizer_kwargs()
    if reg.name == "gradnorm":
        reg_kwargs["buffers"] = list(model.buffers())  # BatchNorm statistics never see the perturbed pass
    return build_optimizer(model.parameters(), spec.NAME, lr=settings.lr, **reg_kwargs, **spec.hyper(), **extra)


def build_schedule(settings: RunSettings, optimizer: torch.optim.Optimizer):
    return settings.schedule.build(optimizer, settings.loop.steps)


def build_monitors(settings: RunSettings, model, optimizer, data: Dataset) -> tuple[Monitor, ...]:
    """Extra metrics at each evaluation: penalty/sparsity, curvature (their time is not train time)."""
    monitors: list[Monitor] = []
    if settings.regularization.name != "none":
        monitors.append(RegularizationMonitor(optimizer))
    if settings.curvature is not None and settings.curvature.enabled:
        try:
            monitors.append(CurvatureMonitor(model, loss_function(data.task), data.x_train, data.y_train, optimizer,
                                             settings.curvature, settings.loop.batch_size, seed=settings.loop.seed))
        except ConfigError as err:
            raise err.within("curvature") from None
    return tuple(monitors)


#: summary values every run records
ALWAYS_RECORDED = ("steps_to_target", "seconds_to_target", "steps_to_first_hit", "seconds_to_first_hit", "steps",
                   "train/loss", "val/loss", "train/batch_loss", "time/train_s")


def why_not_recorded(metric: str, settings: RunSettings) -> Optional[str]:
    """None when a run with ``settings`` records ``metric`` in its summary, else the reason it does not
    (a claim on such a metric could never be judged: refused before any run starts)."""
    if metric in ALWAYS_RECORDED:
        return None
    if metric in ("train/acc", "val/acc", "test/acc"):
        return None if settings.dataset.task == "classification" else "a regression dataset records no accuracy"
    if metric == "test/loss":
        return None if getattr(settings.dataset, "n_test", 1) else "dataset.n_test=0 leaves no test split"
    if metric.endswith("_after_warmup"):
        return None if getattr(settings.preconditioner, "bnp_warmup", None) is not None else "only a method " \
            "with a warm-up (preconditioner=bnp) records times after its warm-up"
    if metric.startswith("reg/"):
        return None if settings.regularization.name != "none" else "regularization=none records no reg/ metrics"
    if metric.startswith("curvature/"):
        if settings.curvature is None or not settings.curvature.enabled:
            return "curvature is not measured (curvature=null, or curvature.enabled=false)"
        space = metric.split("/")[1]
        if space == "z" and not getattr(settings.preconditioner, "EXPOSES_P", True):
            return (f"preconditioner={settings.preconditioner.NAME} ({settings.preconditioner.name}) is a black box: "
                    "it exposes no P, so nothing in z is measured")
        if space in ("p", "z") and space not in settings.curvature.spaces:
            return f"curvature.spaces={list(settings.curvature.spaces)} does not measure {space}"
        return None
    return f"not a value runs record; expected one of {list(ALWAYS_RECORDED)}, */acc, test/loss, reg/*, curvature/*"
