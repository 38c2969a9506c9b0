"""The one training entry point: ``precond-train`` (= ``python -m precond.train``).

A Hydra app over ``conf/train.yaml``: it owns the lifecycle of one run (validate,
build, train, write the run's files). Turning the config into plain objects is
:mod:`precond.config`; the end-of-sweep report is :mod:`precond.callbacks`.

Single run::

    precond-train preconditioner=sgd lr=0.05 steps=500

Sweep (a comparison table and plot are written to the sweep dir at the end)::

    precond-train -m preconditioner=sgd,adagrad,rmsprop,adam seed=0,1,2
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from precond.config import (
    RunSettings,
    build_data,
    build_model,
    build_monitors,
    build_optimizer_from_settings,
    build_schedule,
    settings_from_config,
    to_plain,
)
from precond.errors import ConfigError
from precond.loop import train
from precond.runlog import RunLog, environment, identifying_overrides, write_summary

log = logging.getLogger("precond")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _task_overrides() -> list[str]:
    return [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]


def _wandb_settings(cfg: DictConfig, settings: RunSettings):
    """The logger settings with this run's group (the sweep), name (its identifying overrides) and tags."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    choices = hc.runtime.choices
    tags = [settings.preconditioner.name, f"reg:{settings.regularization.name}",
            f"norm:{settings.normalization.name}", f"model:{choices.get('model')}",
            f"data:{choices.get('dataset')}", *settings.logger.tags]
    return dataclasses.replace(
        settings.logger, group=Path(hc.sweep.dir).name if multirun else cfg.name,
        name=",".join(identifying_overrides(_task_overrides())) or cfg.name, tags=tags,
    )


def run(cfg: DictConfig) -> dict:
    """Validate, build, train; always leaves config.yaml and summary.json in the run dir."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    base = {"seed": cfg.seed, "name": cfg.name, "overrides": _task_overrides(),
            "choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}}
    settings = settings_from_config(cfg)
    base.update(environment(settings.device, hc.runtime.cwd))
    with RunLog(run_dir, to_plain(cfg), _wandb_settings(cfg, settings)) as runlog:
        try:
            data = build_data(cfg, settings)
            model = build_model(cfg, settings, data)
            optimizer = build_optimizer_from_settings(settings, model)
            scheduler = build_schedule(cfg, optimizer, settings.loop.steps)
            monitors = build_monitors(settings, model, optimizer, data)
            loop = settings.loop
            if loop.progress and not sys.stderr.isatty():
                loop = dataclasses.replace(loop, progress=False)
            base["parameters"] = sum(p.numel() for p in model.parameters())
            log.info("%s | %s params on %s | %s", ",".join(base["overrides"]) or "defaults",
                     base["parameters"], settings.device, run_dir)
            summary = {**base, **train(model, optimizer, data, loop, runlog, monitors=monitors, scheduler=scheduler)}
        except Exception as err:
            runlog.write_summary({**base, "status": "failed", "error": f"{type(err).__name__}: {err}"
                                  if not isinstance(err, ConfigError) else str(err)})
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
        raise SystemExit(2) from None
    value = summary.get("val/loss")
    return value if summary["status"] == "completed" else None


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
