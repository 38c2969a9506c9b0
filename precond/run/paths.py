"""Where data are read from and outputs written: the ``paths`` config group.

Both roots come from environment variables when they are set, so one line in a shell profile
(or a SLURM script) fixes them for every run, whatever the current directory:

* ``PRECOND_DATA_ROOT`` — datasets (torchvision's MNIST/, FashionMNIST/, cifar-10-batches-py/
  folders) and the parsed cache of the bundled MNIST subset. Default: ``$XDG_DATA_HOME/precond``
  (``~/.local/share/precond``), one place per user, never the current directory.
* ``PRECOND_OUTPUT_ROOT`` — ``runs/`` and ``sweeps/``. Default: ``outputs`` in the directory the
  command is started from (Hydra's convention, and the repository's ``outputs/`` for ``make run``).

``paths.data_root=...`` / ``paths.output_root=...`` on the command line override both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from precond.settings import Settings, Text, setting

DATA_ROOT_VARIABLE = "PRECOND_DATA_ROOT"
OUTPUT_ROOT_VARIABLE = "PRECOND_OUTPUT_ROOT"


def default_data_root() -> str:
    """``$XDG_DATA_HOME/precond``, else ``~/.local/share/precond`` (absolute)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base).expanduser() / "precond")


@dataclass(frozen=True)
class Paths(Settings):
    """The two roots (``~`` is expanded where they are used)."""

    data_root: str = setting(Text(), default_data_root(), doc=f"datasets and caches (env {DATA_ROOT_VARIABLE})")
    output_root: str = setting(Text(), "outputs", doc=f"runs/ and sweeps/ (env {OUTPUT_ROOT_VARIABLE})")
