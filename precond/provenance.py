"""Provenance: which code, libraries and device produced a run, whatever directory it started in.

* ``precond_version`` — the installed distribution's version (``importlib.metadata``).
* ``git_commit`` — the commit of the source tree the running code came from:
  - run from a checkout (editable install, ``python -m`` in the repository): ``git rev-parse HEAD``
    in the directory that holds the ``precond`` package, with ``-dirty`` when tracked files differ;
  - run from a wheel: the commit written into the package at build time (``precond/BUILD_COMMIT``,
    by ``setup.py``), when the wheel was built from a checkout;
  - otherwise None.
  The current directory never enters: a run started in ``/tmp`` records the same commit.
"""
from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

#: the package's own directory, and the file the wheel build writes the source commit into
PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_COMMIT_FILE = PACKAGE_DIR / "BUILD_COMMIT"


@functools.lru_cache(maxsize=1)
def precond_version() -> Optional[str]:
    """The installed package's version (read once per process: the metadata lookup takes ~1 ms,
    and a pack asks once per member)."""
    try:
        return metadata.version("precond")
    except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
        return None


def _git(args: list[str], where: Path) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def checkout_commit(source_root: Path) -> Optional[str]:
    """HEAD of the git work tree whose top level is ``source_root`` (``-dirty`` when tracked files
    changed); None when ``source_root`` is not the top of a work tree (e.g. site-packages inside one)."""
    top = _git(["rev-parse", "--show-toplevel"], source_root)
    if top is None or Path(top).resolve() != source_root.resolve():
        return None
    commit = _git(["rev-parse", "HEAD"], source_root)
    if commit is None:
        return None
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], source_root)
    return commit + ("-dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def git_commit() -> Optional[str]:
    """The source commit of the running code (see the module docstring); read once per process."""
    commit = checkout_commit(PACKAGE_DIR.parent)
    if commit is not None:
        return commit
    try:
        return BUILD_COMMIT_FILE.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def environment(device) -> dict:
    """Device, library versions and code version of a run (part of every summary)."""
    import torch

    env = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "precond_version": precond_version(), "git_commit": git_commit()}
    if getattr(device, "type", None) == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
