"""Graceful stops: SIGTERM (preemption, ``scancel``), SIGINT (Ctrl-C) and SIGUSR2 (the signal
SLURM sends ahead of a time limit with ``--signal=USR2@<s>``, and submitit's preemption signal).

While a :class:`StopRequest` is active, the first signal only records itself; the
training loop polls the request at every step boundary, stops there, and the entry
point writes the checkpoint and the run's files with ``status: interrupted``. Then
:meth:`StopRequest.forward` hands the signal to the handler that was installed before
(submitit's USR2 handler requeues the job, which then resumes from the checkpoint).
A second signal stops at once (``KeyboardInterrupt``), for a user who does not want
to wait for the step. Handlers can only be installed from the main thread; elsewhere
the request is inert.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Optional

log = logging.getLogger("precond")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)



class StoppedBetweenRuns(BaseException):
    """SIGTERM arrived outside any run (e.g. between two jobs of a sweep): nothing to checkpoint."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_between_runs(signum: int, frame) -> None:
    raise StoppedBetweenRuns(signum)


@contextlib.contextmanager
def stop_between_runs():
    """While active, SIGTERM outside a run raises :class:`StoppedBetweenRuns`, so the entry point can
    still write the table of the jobs that finished (the default handler would end the process on the
    spot); the previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_between_runs)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: handlers that must not be called again after a graceful stop (they would only kill or ignore)
_NOT_FORWARDED = (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler, _raise_between_runs, None)


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

    def forward(self) -> None:
        """Call the handler that was installed before this request for the signal received, once the
        run's files are written (e.g. submitit's requeue); default handlers are not called."""
        previous = self._previous.get(self.signum)
        if self.signum is not None and previous not in _NOT_FORWARDED and callable(previous):
            previous(self.signum, None)
