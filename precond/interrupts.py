"""Graceful stops: SIGTERM (preemption, ``scancel``, SLURM requeue) and SIGINT (Ctrl-C).

While a :class:`StopRequest` is active, the first signal only records itself; the
training loop polls the request at every step boundary, stops there, and the entry
point writes the run's files with ``status: interrupted``. A second signal stops at
once (``KeyboardInterrupt``), for a user who does not want to wait for the step.
Handlers can only be installed from the main thread; elsewhere the request is inert.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

log = logging.getLogger("precond")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """A context manager that turns SIGTERM/SIGINT into a stop request; call it to poll."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by signal ``n``: ``128 + n``."""
        return 128 + (self.signum or 0)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # second signal: stop now
        self.signum = signum
        log.warning("%s received: stopping at the next step boundary and writing the run's files "
                    "(send it again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
