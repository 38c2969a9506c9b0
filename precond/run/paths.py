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
import re
from dataclasses import dataclass
from pathlib import Path

from precond.errors import ConfigError
from precond.settings import Settings, Text, setting

DATA_ROOT_VARIABLE = "PRECOND_DATA_ROOT"
OUTPUT_ROOT_VARIABLE = "PRECOND_OUTPUT_ROOT"


#: the longest run-dir label made from a command line's overrides (a file name stays well under 255 bytes)
MAX_LABEL = 80


def run_label(name: str, overrides: str) -> str:
    """The middle of a single run's dir name: ``name`` when set (an experiment sets it), else the command line's
    overrides as Hydra joins them (``lr=0.01,model=mlp``, the path keys excluded in conf/train.yaml), made a safe
    file-name component (``/`` and other unsafe characters become ``_``; at most :data:`MAX_LABEL` characters),
    and ``default`` for a run with no overrides. So ``ls outputs/runs/<date>`` says which run is which."""
    if name != "default" or not overrides:
        return name
    bare = re.sub(r"(^|,)[+~]+", r"\1", overrides)  # ++key=… and +key=… name the same setting as key=…
    safe = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._=,+\-\[\]]", "_", bare)).lstrip(".")
    return (safe[:MAX_LABEL - 1] + "+" if len(safe) > MAX_LABEL else safe) or "default"


def default_data_root() -> str:
    """``$XDG_DATA_HOME/precond``, else ``~/.local/share/precond`` (absolute)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base).expanduser() / "precond")


@dataclass(frozen=True)
class Paths(Settings):
    """The two roots (``~`` is expanded where they are used)."""

    data_root: str = setting(Text(), default_data_root(), doc=f"datasets and caches (env {DATA_ROOT_VARIABLE})")
    output_root: str = setting(Text(), "outputs", doc=f"runs/ and sweeps/ (env {OUTPUT_ROOT_VARIABLE})")


def settle_output_root(argv: list[str]) -> list[str]:
    """The output root as Hydra will use it for the run dir, checked before Hydra makes any directory: an empty
    root (``PRECOND_OUTPUT_ROOT=''`` or ``paths.output_root=''``) would put runs at ``/runs/…`` and is refused;
    a leading ``~`` is expanded (in the environment variable and in the override), so no directory named ``~``
    appears. Returns the command line with the override expanded."""
    from_env = os.environ.get(OUTPUT_ROOT_VARIABLE)
    if from_env is not None:
        if not from_env.strip():
            raise ConfigError(OUTPUT_ROOT_VARIABLE, "a directory", "",
                              f"unset {OUTPUT_ROOT_VARIABLE} for ./outputs, or name a directory")
        os.environ[OUTPUT_ROOT_VARIABLE] = os.path.expanduser(from_env)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") == "paths.output_root":
            root = value.strip().strip("'\"")
            if not root:
                raise ConfigError("paths.output_root", "a directory", "",
                                  "leave it out for ./outputs (or $PRECOND_OUTPUT_ROOT), or name a directory")
            arg = f"{key}={os.path.expanduser(root)}"
        out.append(arg)
    return out
