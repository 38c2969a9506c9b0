"""``hydra/sweeper=checked`` (precond's default): Hydra's basic sweeper, with every job's config checked by
precond's schema before the first job of the sweep runs.

Hydra's basic sweeper already composes every job of a batch before launching it, which catches a key that
does not exist; a value that exists but is wrong (``lr=-1`` in job 7 of 12) would only be found when job 7
starts, after six jobs have trained. Here the same composed configs also go through the checks a run makes
before it writes anything (:func:`precond.run.config.check_job_config`), and the first refusal names the job
and its overrides. The device is not resolved here: the sweep may be checked on a machine without the GPUs
its jobs will get.
"""
# no `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore

from precond.errors import ConfigError
from precond.run.config import check_job_config


@dataclass
class CheckedSweeperConf:
    _target_: str = "hydra_plugins.precond_checked.checked_sweeper.CheckedSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="checked", node=CheckedSweeperConf, provider="precond")


class CheckedSweeper(BasicSweeper):
    """Hydra's basic sweeper; each batch's job configs are composed and checked before the batch launches."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        loader = self.hydra_context.config_loader
        for number, overrides in enumerate(batch):
            config = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(overrides))
            try:
                check_job_config(config)
            except ConfigError as err:
                where = f"in job {number} ({' '.join(overrides)}); no job of the sweep has run"
                raise ConfigError(err.key, err.expected, err.got,
                                  f"{err.fix}; {where}" if err.fix else where) from None
