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
    from precond.report import compare, load_runs

    try:
        compare(sweep_dir)
    except Exception as err:  # a report problem must not hide the runs' own results
        log.warning("could not write the comparison report for %s: %s", sweep_dir, err)
    return [run.summary.get("status", "?") for run in load_runs(sweep_dir)]


class ReportOnMultirunEnd(Callback):
    """After a sweep, write the comparison table and plot into the sweep directory; exit 1 when a
    job did not complete (failed or interrupted; diverged is a result, not an error)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        statuses = write_sweep_report(Path(config.hydra.sweep.dir))
        bad = [s for s in statuses if s in ("failed", "interrupted")]
        if bad:
            log.error("%d of %d jobs did not complete (see the table and their summary.json)", len(bad),
                      len(statuses))
            raise SystemExit(1)
