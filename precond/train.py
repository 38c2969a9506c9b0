"""The one training entry point: ``precond-train`` (= ``python -m precond.train``).

A Hydra app over ``conf/train.yaml``. This is the only module that touches
Hydra/OmegaConf: it validates the config, turns it into plain arguments for
the library (data, models, optimizer, loop), and writes the run's files.

Single run::

    precond-train preconditioner=sgd lr=0.05 steps=500

Sweep (a comparison table and plot are written to the sweep dir at the end)::

    precond-train -m preconditioner=sgd,adagrad,rmsprop,adam seed=0,1,2
"""
from __future__ import annotations

import logging
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from precond import build_optimizer
from precond.curvature import BN_MODES, HVP_MODES, METHODS, SPACES, CurvatureMonitor, CurvatureSettings
from precond.data import Dataset
from precond.errors import ConfigError
from precond.loop import LoopSettings, loss_function, train
from precond.normalization import NORMALIZATIONS, standardize_inputs
from precond.regularizers import HVP_BACKENDS, L1_FORMS, POLICIES, VARIABLES
from precond.runlog import WANDB_MODES, RunLog, WandbSettings, write_summary

log = logging.getLogger("precond")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError("device", "auto, cpu, cuda or cuda:N", name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "a CUDA GPU for device=cuda", "none available",
                          "use device=auto or device=cpu")
    return torch.device(name)


def validate(cfg: DictConfig) -> None:
    """Check the settings before anything is built; each error names its key."""
    _validate_run(cfg)
    _validate_regularization(cfg.regularization)
    _validate_normalization(cfg)
    if cfg.preconditioner.name == "bnp":
        _validate_bnp(cfg)
    if cfg.hessian.name != "off":
        _validate_hessian(cfg.hessian, cfg.eval_every)
    resolve_device(cfg.device)


def _validate_run(cfg: DictConfig) -> None:
    def positive_int(key: str) -> None:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(key, "a positive integer", value)

    for key in ("steps", "batch_size", "eval_every", "eval_batch_size"):
        positive_int(key)
    if not isinstance(cfg.lr, (int, float)) or not cfg.lr > 0:
        raise ConfigError("lr", "a positive number", cfg.lr, "e.g. lr=0.01")
    if cfg.dtype not in DTYPES:
        raise ConfigError("dtype", f"one of {sorted(DTYPES)}", cfg.dtype)
    if cfg.logger.name == "wandb" and cfg.logger.mode not in WANDB_MODES:
        raise ConfigError("logger.mode", f"one of {list(WANDB_MODES)}", cfg.logger.mode)


def _validate_regularization(reg: DictConfig) -> None:
    if reg.name != "none":
        if reg.variable not in VARIABLES:
            raise ConfigError("regularization.variable", f"one of {list(VARIABLES)}", reg.variable,
                              "p penalizes the model parameters, z the intrinsic ones (p = P z)")
        if not isinstance(reg.strength, (int, float)) or reg.strength < 0:
            raise ConfigError("regularization.strength", "a number >= 0", reg.strength)
        if reg.policy not in POLICIES:
            raise ConfigError("regularization.policy", f"one of {list(POLICIES)}", reg.policy)
        if reg.name == "l1" and reg.form not in L1_FORMS:
            raise ConfigError("regularization.form", f"one of {list(L1_FORMS)}", reg.form,
                              "prox gives exact zeros, subgradient does not")
        if reg.name == "gradnorm":
            if reg.backend not in HVP_BACKENDS:
                raise ConfigError("regularization.backend", f"one of {list(HVP_BACKENDS)}", reg.backend)
            if reg.r is not None and not reg.r > 0:
                raise ConfigError("regularization.r", "null (= strength) or a number > 0", reg.r)


def _validate_normalization(cfg: DictConfig) -> None:
    if cfg.normalization.name not in NORMALIZATIONS:
        raise ConfigError("normalization.name", f"one of {list(NORMALIZATIONS)}", cfg.normalization.name)
    if cfg.normalization.name == "batchnorm" and cfg.batch_size < 2:
        raise ConfigError("batch_size", "at least 2 with normalization=batchnorm (train-mode BatchNorm "
                          "needs more than one sample per channel)", cfg.batch_size,
                          "use normalization=none with preconditioner=bnp, or batch_size>=2")


def _validate_bnp(cfg: DictConfig) -> None:
    reg = cfg.regularization
    if reg.name != "none" and (reg.variable == "z" or reg.get("form") == "prox"):
        raise ConfigError("regularization.variable" if reg.variable == "z" else "regularization.form",
                          "variable=p (and form=subgradient for l1) with preconditioner=bnp",
                          reg.variable if reg.variable == "z" else reg.form,
                          "BNP's P is block-diagonal per neuron, so z = P⁻¹p and the L1 prox are not defined")
    if cfg.normalization.name == "batchnorm" and not cfg.preconditioner.allow_batchnorm:
        raise ConfigError("normalization", "none (or input/layernorm) with preconditioner=bnp, which replaces "
                          "BatchNorm", cfg.normalization.name, "or set preconditioner.allow_batchnorm=true")
    if cfg.hessian.name != "off" and "z" in cfg.hessian.spaces:
        raise ConfigError("hessian.spaces", "[p] with preconditioner=bnp (its P is not diagonal)",
                          list(cfg.hessian.spaces), "set hessian.spaces=[p]")


def _validate_hessian(hess: DictConfig, eval_every: int) -> None:
    if not isinstance(hess.every, int) or hess.every < 1 or hess.every % eval_every:
        raise ConfigError("hessian.every", f"a positive multiple of eval_every={eval_every}", hess.every,
                          "curvature is measured at evaluation steps")
    if hess.method not in METHODS:
        raise ConfigError("hessian.method", f"one of {list(METHODS)}", hess.method)
    if not hess.spaces or not set(hess.spaces) <= set(SPACES):
        raise ConfigError("hessian.spaces", f"a non-empty subset of {list(SPACES)}", list(hess.spaces))
    if hess.bn_mode not in BN_MODES:
        raise ConfigError("hessian.bn_mode", f"one of {list(BN_MODES)}", hess.bn_mode)
    if hess.hvp_mode not in HVP_MODES:
        raise ConfigError("hessian.hvp_mode", f"one of {list(HVP_MODES)}", hess.hvp_mode)


def _instantiate(node: DictConfig, **kwargs) -> Any:
    """The single place that calls ``hydra.utils.instantiate`` (dataset and model factories).

    A ConfigError raised by the factory is passed on as itself (Hydra would wrap it), so the
    user sees the one-line message naming the key.
    """
    try:
        return hydra.utils.instantiate(node, **kwargs, _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


def build_data(cfg: DictConfig, device: torch.device) -> Dataset:
    data = _instantiate(cfg.dataset)
    if cfg.normalization.name == "input":
        data = standardize_inputs(data)
    return data.to(device, DTYPES[cfg.dtype])


def build_model(cfg: DictConfig, data: Dataset, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    model = _instantiate(cfg.model, in_shape=data.in_shape, num_outputs=data.num_outputs,
                         normalization=cfg.normalization.name)
    return model.to(device=device, dtype=DTYPES[cfg.dtype])


def build_optimizer_from_config(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    hyper = OmegaConf.to_container(cfg.preconditioner, resolve=True)
    name = hyper.pop("name")
    hyper.pop("lr", None)
    hyper.update(hyper.pop("base_hyper", None) or {})  # bnp: the base step's own hyperparameters
    if name == "bnp":
        hyper["model"] = model
    reg = OmegaConf.to_container(cfg.regularization, resolve=True)
    reg_name = reg.pop("name")
    if reg_name == "gradnorm":
        reg["buffers"] = list(model.buffers())  # BatchNorm statistics never see the perturbed pass
    try:
        return build_optimizer(model.parameters(), name, lr=float(cfg.lr), regularization=reg_name, **reg, **hyper)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError("preconditioner/regularization", "settings build_optimizer accepts", None, str(err)) from err


def build_monitors(cfg: DictConfig, model, optimizer, data: Dataset) -> list:
    """Extra metrics at each evaluation: penalty/sparsity, curvature (their time is not train time)."""
    monitors = []
    if cfg.regularization.name != "none":
        monitors.append(lambda step: optimizer.regularization_metrics())
    if cfg.hessian.name != "off":
        settings = OmegaConf.to_container(cfg.hessian, resolve=True)
        settings.pop("name")
        settings["spaces"] = tuple(settings["spaces"])
        monitors.append(CurvatureMonitor(model, loss_function(data.task), data.x_train, data.y_train, optimizer,
                                         CurvatureSettings(**settings), cfg.batch_size, seed=cfg.seed))
    return monitors


def _git_commit() -> Optional[str]:
    try:
        cwd = HydraConfig.get().runtime.cwd
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _task_overrides() -> list[str]:
    return [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]


def _wandb_settings(cfg: DictConfig) -> Optional[WandbSettings]:
    if cfg.logger.name != "wandb":
        return None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = [o for o in _task_overrides() if not o.startswith(("logger", "experiment"))]
    tags = [cfg.preconditioner.name, f"reg:{cfg.regularization.name}", f"norm:{cfg.normalization.name}",
            f"model:{hc.runtime.choices.get('model')}", f"data:{hc.runtime.choices.get('dataset')}",
            *cfg.logger.tags]
    return WandbSettings(
        mode=cfg.logger.mode, project=cfg.logger.project, entity=cfg.logger.entity,
        group=Path(hc.sweep.dir).name if multirun else cfg.name,
        name=",".join(overrides) or cfg.name, tags=tags,
    )


def _environment(device: torch.device) -> dict:
    env = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "git_commit": _git_commit()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run(cfg: DictConfig) -> dict:
    """Validate, build, train; always leaves config.yaml and summary.json in the run dir."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    base = {"seed": cfg.seed, "name": cfg.name, "overrides": _task_overrides(),
            "choices": {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}}
    validate(cfg)
    device = resolve_device(cfg.device)
    base.update(_environment(device))
    with RunLog(run_dir, config, _wandb_settings(cfg)) as runlog:
        try:
            data = build_data(cfg, device)
            model = build_model(cfg, data, device)
            optimizer = build_optimizer_from_config(cfg, model)
            settings = LoopSettings(
                steps=cfg.steps, batch_size=cfg.batch_size, eval_every=cfg.eval_every, seed=cfg.seed,
                target_metric=cfg.target.metric, target_value=cfg.target.value,
                eval_batch_size=cfg.eval_batch_size, divergence_factor=cfg.divergence_factor,
                progress=cfg.progress and sys.stderr.isatty(),
            )
            base["parameters"] = sum(p.numel() for p in model.parameters())
            log.info("%s | %s params on %s | %s", ",".join(base["overrides"]) or "defaults",
                     base["parameters"], device, run_dir)
            monitors = build_monitors(cfg, model, optimizer, data)
            summary = {**base, **train(model, optimizer, data, settings, runlog, monitors=tuple(monitors))}
        except ConfigError as err:
            runlog.write_summary({**base, "status": "failed", "error": str(err)})
            raise
        except Exception as err:
            runlog.write_summary({**base, "status": "failed", "error": f"{type(err).__name__}: {err}"})
            raise
        runlog.write_summary(summary)
    torch.save(model.state_dict(), run_dir / "model.pt")
    torch.save(optimizer.state_dict(), run_dir / "optimizer.pt")
    _log_result(summary)
    return summary


def _log_result(summary: dict) -> None:
    parts = [f"status={summary['status']}"]
    for key in ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc"):
        if summary.get(key) is not None:
            parts.append(f"{key}={summary[key]:.4g}")
    parts.append(f"steps_to_target={summary['steps_to_target']}")
    log.info(" ".join(parts))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> Optional[float]:
    """Hydra task: one job. Config errors print one line; in a sweep they fail only this job."""
    try:
        summary = run(cfg)
    except ConfigError as err:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if not (run_dir / "summary.json").exists():
            write_summary(run_dir, {"status": "failed", "error": str(err), "overrides": _task_overrides()})
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return None
        raise SystemExit(2)
    value = summary.get("val/loss")
    return value if summary["status"] == "completed" else None


class ReportOnMultirunEnd(Callback):
    """After a sweep, write the comparison table and plot into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from precond.report import compare

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            compare(sweep_dir)
        except Exception as err:  # a report problem must not hide the runs' own results
            log.warning("could not write the comparison report for %s: %s", sweep_dir, err)


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
