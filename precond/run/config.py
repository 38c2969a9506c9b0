"""Config → plain objects: the one place (with the entry point) that reads a DictConfig.

Every config group option carries a ``_target_`` (a library factory or settings
dataclass); :func:`instantiate` builds it and turns the library's errors into
one-line :class:`ConfigError`\\ s that name the full config key. The rules about
each setting live in the library object that owns it; this module only adds the
config key to the message and checks the few rules that join two groups.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from precond.curvature import CurvatureSettings
from precond.data import Dataset
from precond.errors import ConfigError
from precond.normalization import Normalization, standardize_inputs
from precond.optim import ComposedOptimizer, PreconditionerSpec, build_optimizer
from precond.regularizers import RegularizationSpec
from precond.run.files import WandbSettings
from precond.run.loop import LoopSettings, loss_function
from precond.run.monitors import CurvatureMonitor, Monitor, RegularizationMonitor

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def instantiate(cfg: DictConfig, node: str, **kwargs) -> Any:
    """Build ``cfg.<node>`` from its ``_target_``; errors name ``<node>.<key>``.

    A ConfigError from the target is re-keyed under ``node``; a TypeError (an unknown
    or missing key) becomes a ConfigError naming the node.
    """
    try:
        return hydra.utils.instantiate(cfg[node], **kwargs, _convert_="all")
    except ConfigError as err:
        raise err.within(node) from None
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause.within(node) from None
        if isinstance(cause, TypeError):
            raise ConfigError(node, "only the keys its config file documents", None, str(cause)) from None
        raise


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without a GPU is a config error."""
    if not isinstance(name, str) or not (name in ("auto", "cpu") or name.startswith("cuda")):
        raise ConfigError("device", "auto, cpu, cuda or cuda:N", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "a CUDA GPU for device=cuda", "none available",
                          "use device=auto or device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError("device", "auto, cpu, cuda or cuda:N", name) from None


@dataclasses.dataclass
class RunSettings:
    """Everything a run needs that can be checked before any data or model is built."""

    device: torch.device
    dtype: torch.dtype
    lr: float
    loop: LoopSettings
    preconditioner: PreconditionerSpec
    regularization: RegularizationSpec
    normalization: Normalization
    logger: WandbSettings
    curvature: Optional[CurvatureSettings]
    channels_last: bool = False
    compile: bool = False


def settings_from_config(cfg: DictConfig) -> RunSettings:
    """Validate the config by building its settings objects; raises ConfigError naming the key."""
    if cfg.dtype not in DTYPES:
        raise ConfigError("dtype", f"one of {sorted(DTYPES)}", cfg.dtype)
    for key in ("channels_last", "compile"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(key, "true or false", cfg[key])
    if cfg.precision == "bf16" and cfg.dtype != "float32":
        raise ConfigError("precision", "fp32 with dtype=float64 (bf16 autocast keeps float32 weights)",
                          cfg.precision, "use dtype=float32 with precision=bf16")
    lr = cfg.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ConfigError("lr", "a finite number > 0", lr, "e.g. lr=0.01")
    loop = LoopSettings(  # its keys are top-level config keys: errors need no prefix
        steps=cfg.steps, batch_size=cfg.batch_size, eval_every=cfg.eval_every, seed=cfg.seed,
        target_metric=cfg.target.metric, target_value=cfg.target.value,
        eval_batch_size=cfg.eval_batch_size, divergence_factor=cfg.divergence_factor,
        progress=bool(cfg.progress), checkpoint_every=cfg.checkpoint_every, precision=cfg.precision,
    )
    curvature = instantiate(cfg, "curvature") if cfg.get("curvature") is not None else None
    if curvature is not None:
        try:
            curvature.check_schedule(loop.eval_every)
        except ConfigError as err:
            raise err.within("curvature") from None
    settings = RunSettings(
        device=resolve_device(cfg.device), dtype=DTYPES[cfg.dtype], lr=float(lr), loop=loop,
        preconditioner=instantiate(cfg, "preconditioner"), regularization=instantiate(cfg, "regularization"),
        normalization=instantiate(cfg, "normalization"), logger=instantiate(cfg, "logger"), curvature=curvature,
        channels_last=cfg.channels_last, compile=cfg.compile,
    )
    _check_combinations(settings)
    return settings


def _check_combinations(s: RunSettings) -> None:
    """The rules that join two groups (each group's own rules live in its settings object)."""
    if s.normalization.name == "batchnorm" and s.loop.batch_size < 2:
        raise ConfigError("batch_size", "at least 2 with normalization=batchnorm (train-mode BatchNorm "
                          "needs more than one sample per channel)", s.loop.batch_size,
                          "use normalization=none with preconditioner=bnp, or batch_size>=2")
    # BNP's own rules (penalties in p only, no BatchNorm in the model) live in build_optimizer
    if s.preconditioner.name == "bnp":
        if s.curvature is not None and "z" in s.curvature.spaces:
            raise ConfigError("curvature.spaces", "[p] with preconditioner=bnp (its P is not diagonal)",
                              list(s.curvature.spaces), "set curvature.spaces=[p]")


def build_data(cfg: DictConfig, settings: RunSettings) -> Dataset:
    """The dataset, resident on the run's device (NHWC images with ``channels_last``)."""
    data = instantiate(cfg, "dataset")
    if settings.normalization.standardizes_inputs:
        data = standardize_inputs(data)
    if settings.channels_last and len(data.in_shape) != 3:
        raise ConfigError("channels_last", "false for vector inputs (it sets the memory format of C×H×W images)",
                          True, f"dataset inputs have shape {data.in_shape}")
    return data.to(settings.device, settings.dtype, channels_last=settings.channels_last)


def build_model(cfg: DictConfig, settings: RunSettings, data: Dataset) -> torch.nn.Module:
    """The model with the run's seed, dtype and device; NHWC weights with ``channels_last``; its forward
    compiled with ``compile`` (``nn.Module.compile``: the state-dict keys stay those of the model)."""
    torch.manual_seed(settings.loop.seed)
    model = instantiate(cfg, "model", in_shape=data.in_shape, num_outputs=data.num_outputs,
                        normalization=settings.normalization.name)
    model = model.to(device=settings.device, dtype=settings.dtype)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        model.compile()
    return model


def build_optimizer_from_settings(settings: RunSettings, model: torch.nn.Module) -> ComposedOptimizer:
    spec, reg = settings.preconditioner, settings.regularization
    hyper = dict(spec.hyper)
    extra = {"model": model} if spec.name == "bnp" else {}
    reg_kwargs = reg.optimizer_kwargs()
    if reg.name == "gradnorm":
        reg_kwargs["buffers"] = list(model.buffers())  # BatchNorm statistics never see the perturbed pass
    try:
        return build_optimizer(model.parameters(), spec.name, lr=settings.lr, **reg_kwargs, **hyper, **extra)
    except ConfigError as err:
        raise err.within("preconditioner") from None
    except (TypeError, ValueError) as err:
        raise ConfigError("preconditioner", "settings build_optimizer accepts", None, str(err)) from None


def build_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps: int):
    make = instantiate(cfg, "schedule")
    try:
        return make(optimizer, steps)
    except ConfigError as err:
        raise err.within("schedule") from None


def build_monitors(settings: RunSettings, model, optimizer, data: Dataset) -> tuple[Monitor, ...]:
    """Extra metrics at each evaluation: penalty/sparsity, curvature (their time is not train time)."""
    monitors: list[Monitor] = []
    if settings.regularization.name != "none":
        monitors.append(RegularizationMonitor(optimizer))
    if settings.curvature is not None:
        try:
            monitors.append(CurvatureMonitor(model, loss_function(data.task), data.x_train, data.y_train, optimizer,
                                             settings.curvature, settings.loop.batch_size, seed=settings.loop.seed))
        except ConfigError as err:
            raise err.within("curvature") from None
    return tuple(monitors)


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain Python containers (for files and W&B)."""
    return OmegaConf.to_container(cfg, resolve=True)
