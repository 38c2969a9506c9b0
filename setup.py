"""Wheel build hooks (the metadata lives in pyproject.toml).

A wheel carries the repository's top-level ``conf/`` inside the package as ``precond/conf``, so an
installed ``precond-train`` finds its configs from any directory, and ``precond/BUILD_COMMIT``, the
commit of the checkout it was built from, so an installed run records where its code came from.
An editable install reads both from the checkout itself (``precond.run.entry.config_dir``,
``precond.provenance``).
"""
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def source_commit():
    """HEAD of the checkout being built (``-dirty`` when tracked files changed), or None outside one."""
    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != ROOT:
        return None
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit and commit + ("-dirty" if dirty else "")


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        package = Path(self.build_lib) / "precond"
        shutil.copytree(ROOT / "conf", package / "conf", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        commit = source_commit()
        if commit:
            (package / "BUILD_COMMIT").write_text(commit + "\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildWithConfigs})
