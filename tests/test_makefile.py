"""The Makefile's install refuses a disk too small for torch before pip starts (a CI run once ran out of disk)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_install_refuses_a_full_disk_before_creating_the_venv(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    need = 10**9  # GiB: more than any disk has
    done = subprocess.run(["make", "install", f"NEED_GIB={need}", f"PY={sys.executable}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"error: installing torch needs about {need} GiB free on the disk of {tmp_path}" in done.stderr
    assert "GiB free)" in done.stderr and "CPU build of torch" in done.stderr
    assert not (tmp_path / ".venv").exists()  # refused before anything was made


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_install_skips_the_disk_check_when_the_venv_already_has_torch(tmp_path):
    """An existing .venv that imports torch (a CPU build put there by hand) needs no room for another:
    the install goes on to pip (here a stand-in that records its arguments)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "pip.log"
    (bin_dir / "python").write_text("#!/bin/sh\nexit 0\n")  # "import torch" succeeds
    (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    for tool in ("python", "pip"):
        (bin_dir / tool).chmod(0o755)
    done = subprocess.run(["make", "install", "NEED_GIB=1000000000", f"PY={sys.executable}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "needs about" not in done.stderr
    assert "install -q --no-cache-dir torch==" in log.read_text()
