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
        _log_tuned_summary_to_wandb(config, sweep_dir)
        bad = [s for s in statuses if s in ("failed", "interrupted")]
        if bad:
            log.error("%d of %d jobs did not complete (see the table and their summary.json)", len(bad),
                      len(statuses))
            raise SystemExit(1)


def _log_tuned_summary_to_wandb(config: DictConfig, sweep_dir: Path) -> None:
    """With a W&B logger, a tuned sweep also gets one summary run: selection and verdict tables, plots."""
    from precond.sweep.tuned_report import REPORT_IMAGES, SELECTION, VERDICTS, summary_tables

    if config.get("logger") is None or config.logger.get("mode", "disabled") == "disabled":
        return
    if not (sweep_dir / SELECTION).exists() or not (sweep_dir / VERDICTS).exists():
        return
    from omegaconf import OmegaConf

    from precond.run.config import build_group
    from precond.run.files import log_sweep_summary

    try:
        logger = build_group("logger", OmegaConf.to_container(config.logger, resolve=True))
        run_id = log_sweep_summary(logger, sweep_dir, summary_tables(sweep_dir),
                                   {name: sweep_dir / file for name, file in REPORT_IMAGES.items()})
        log.info("W&B summary run %s holds the selection and verdict tables", run_id)
    except Exception as err:  # W&B trouble must not hide the report already written
        log.warning("could not log the W&B summary run: %s", err)
