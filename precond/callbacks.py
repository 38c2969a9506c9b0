"""Hydra callbacks of the entry point: the sweep report written when a multirun ends."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("precond")


class ReportOnMultirunEnd(Callback):
    """After a sweep, write the comparison table and plot into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from precond.report import compare

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            compare(sweep_dir)
        except Exception as err:  # a report problem must not hide the runs' own results
            log.warning("could not write the comparison report for %s: %s", sweep_dir, err)
