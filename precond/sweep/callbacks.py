"""Hydra callbacks of the entry point: the sweep report written when a multirun ends."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("precond")


def write_sweep_report(sweep_dir: Path) -> list[str]:
    """Write the comparison table and plot of ``sweep_dir``; return the statuses of its runs."""
    from precond.sweep.report import write_report
    from precond.sweep.runs import load_runs

    try:
        write_report(sweep_dir)
    except Exception as err:  # a report problem must not hide the runs' own results
        log.warning("could not write the comparison report for %s: %s", sweep_dir, err)
    try:
        return [run.summary.get("status", "?") for run in load_runs(sweep_dir)]
    except Exception as err:  # nor take the sweep down
        log.warning("could not read the runs of %s: %s", sweep_dir, err)
        return ["?"]


class ReportOnMultirunEnd(Callback):
    """After a sweep, write the comparison table and plot into the sweep directory; exit 1 when a
    job did not complete (failed or interrupted; diverged is a result, not an error)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = write_sweep_report(sweep_dir)
        _log_sweep_to_wandb(config, sweep_dir)
        bad = [s for s in statuses if s in ("failed", "interrupted")]
        if bad:
            log.error("%d of %d jobs did not complete (see the table and their summary.json)", len(bad),
                      len(statuses))
            raise SystemExit(1)
        problem = _optimizer_problem(sweep_dir)
        if problem:
            log.error("the sweep found no best value: %s", problem)
            raise SystemExit(1)


#: written by Hydra's Optuna sweeper into the sweep dir (and by precond's guarded sweeper when there is no best trial)
OPTIMIZATION_RESULTS = "optimization_results.yaml"


def _optimizer_problem(sweep_dir: Path):
    """Why an optimizing sweep (precond's Optuna sweeper) ended without a best value, else None: read from the
    ``optimization_results.yaml`` it wrote (``best_value: null`` and ``problem``), so this module needs nothing
    from the plugin (which imports the entry point, which imports this)."""
    import yaml

    try:
        results = yaml.safe_load((Path(sweep_dir) / OPTIMIZATION_RESULTS).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if isinstance(results, dict) and "best_value" in results and results["best_value"] is None:
        return str(results.get("problem") or "no best value")
    return None


#: files of a sweep's report, logged together as one W&B artifact (those present)
REPORT_FILES = ("comparison*.md", "comparison*.png", "selection.json", "verdicts.json", "lr_sensitivity.png",
                "confirmation.png", "grid_heatmap.png", "pareto.png",
                "sensitivity.png", "optimization_results.yaml")


def _log_sweep_to_wandb(config: DictConfig, sweep_dir: Path) -> None:
    """With a W&B logger, a sweep also gets one summary run in its group: the selection and verdict
    tables of a tuned sweep, the report's plots, and every report file as one artifact."""
    from precond.sweep.tuned_report import REPORT_IMAGES, SELECTION, VERDICTS, summary_tables

    if config.get("logger") is None or config.logger.get("mode", "disabled") == "disabled":
        return
    from omegaconf import OmegaConf

    from precond.run.config import build_group
    from precond.run.files import log_sweep_summary

    tuned = (sweep_dir / SELECTION).exists() and (sweep_dir / VERDICTS).exists()
    images = REPORT_IMAGES if tuned else {"comparison": "comparison.png"}
    files = sorted({path for pattern in REPORT_FILES for path in sweep_dir.glob(pattern)})
    try:
        logger = build_group("logger", OmegaConf.to_container(config.logger, resolve=True))
        run_id = log_sweep_summary(logger, sweep_dir, summary_tables(sweep_dir) if tuned else {},
                                   {name: sweep_dir / file for name, file in images.items()
                                    if (sweep_dir / file).exists()}, files)
        log.info("W&B summary run %s holds the sweep's report", run_id)
    except Exception as err:  # W&B trouble must not hide the report already written
        log.warning("could not log the W&B summary run: %s", err)
