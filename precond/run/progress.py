"""Progress of a training loop: a tqdm bar on a terminal, timed log lines everywhere else.

Under SLURM, ``nohup`` or any redirect, stderr is a file and a bar would write nothing useful
(tqdm's carriage returns) until the end. There, one line goes to the ``precond`` logger every
``progress_every_s`` seconds of wall time::

    [job 7] step 1200/2000 (60%) | 412 steps/s | eta 2s | batch loss 0.0213 | val/loss 0.0198

The line's prefix names the job (a sweep job's number, or the members of a pack), so the
interleaved lines of a log say whose they are. ``progress=false`` switches both off.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Optional

from precond.settings import is_number

#: the attribute a run's start and end lines carry when the run belongs to a tuned sweep
TUNED_RUN = "tuned_run"


class HideTunedRunLines(logging.Filter):
    """Console filter: a tuned sweep's runs come by the hundred, and their start and end lines (records carrying
    :data:`TUNED_RUN`) would bury the sweep's own lines; the sweeper reports each batch in one line instead. The
    lines still reach every ``train.log``; ``hydra.verbose=precond`` shows them on the console too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, TUNED_RUN, False) or logging.getLogger("precond").isEnabledFor(logging.DEBUG)

log = logging.getLogger("precond")

def _fmt(values: dict) -> str:
    return " | ".join(f"{k} {v:.4g}" if is_number(v) else f"{k} {v}" for k, v in values.items())


class BarProgress:
    """tqdm's step bar on stderr (a terminal); the last evaluation's values as its postfix."""

    def __init__(self, total: int, initial: int, desc: Optional[str]):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", desc=desc, leave=False, mininterval=1.0,
                        dynamic_ncols=True)

    def advance(self, step: int, evaluated: bool, values: Callable[[], dict]) -> None:
        if evaluated:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values().items() if is_number(v)})
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class LineProgress:
    """One log line every ``every_s`` seconds: step, rate, time left and ``values()`` (read only then,
    so a loop whose values live on a GPU syncs once per line, not per step)."""

    def __init__(self, total: int, initial: int, desc: Optional[str], every_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.prefix, self.every_s, self.clock = total, f"[{desc}] " if desc else "", every_s, clock
        self.last_t, self.last_step = clock(), initial

    def advance(self, step: int, evaluated: bool, values: Callable[[], dict]) -> None:
        now = self.clock()
        if now - self.last_t < self.every_s:
            return
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        shown = _fmt(values())
        log.info("%sstep %d/%d (%d%%) | %.4g steps/s | eta %s%s", self.prefix, step, self.total,
                 100 * step // max(self.total, 1), rate, _duration(eta), f" | {shown}" if shown else "")
        self.last_t, self.last_step = now, step

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def make_progress(enabled: bool, every_s: float, total: int, initial: int = 0, desc: Optional[str] = None,
                  terminal: Optional[bool] = None):
    """A bar on a terminal, timed lines otherwise, None when ``enabled`` is false."""
    if not enabled:
        return None
    if terminal is None:
        terminal = sys.stderr.isatty()
    return BarProgress(total, initial, desc) if terminal else LineProgress(total, initial, desc, every_s)
