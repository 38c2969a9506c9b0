"""Shared helpers: run the CLI as a user would, and write small datasets in real on-disk formats."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# the tests never talk to W&B servers
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
# data caches (the parsed MNIST subset) and any run without an explicit dir go to one folder per session,
# never into the user's ~/.local/share/precond or the repository's outputs/
_SESSION = Path(tempfile.mkdtemp(prefix="precond-tests-"))
os.environ.setdefault("PRECOND_DATA_ROOT", str(_SESSION / "data"))
os.environ.setdefault("PRECOND_OUTPUT_ROOT", str(_SESSION / "outputs"))
# one CPU thread for every run (in this process and in the CLI subprocesses) and sleeping OpenMP waits: the
# tests' models are small, and one thread is the fastest setting for them (measured: README, "Performance")
os.environ.setdefault("PRECOND_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (any import below may load it)
_TEST_THREADS = int(os.environ["PRECOND_THREADS"]) if os.environ["PRECOND_THREADS"].isdigit() else None


def pytest_report_header(config):
    import torch

    if _TEST_THREADS is not None:
        torch.set_num_threads(_TEST_THREADS)
    return (f"precond: PRECOND_THREADS={os.environ['PRECOND_THREADS']}, "
            f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, torch threads {torch.get_num_threads()}")


def run_cli(tmp_path: Path, *overrides: str, multirun: bool = False, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """``python -m precond.train`` with run/sweep dirs under ``tmp_path`` (cwd = the repo)."""
    args = [sys.executable, "-m", "precond.run.entry"]
    if multirun:
        args.append("-m")
    args += [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep", "progress=false", *overrides]
    full_env = {**os.environ, "WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path), **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v != ""}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=full_env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"CLI failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_in_process(argv: list[str]) -> int:
    """Run the entry point in this process (no 3.5 s interpreter start); returns its exit code."""
    from hydra.core.global_hydra import GlobalHydra

    from precond.run import entry as train

    GlobalHydra.instance().clear()
    old = sys.argv
    flags = [a for a in argv if a.startswith("-")]
    sys.argv = ["precond-train", *flags, "progress=false", *[a for a in argv if not a.startswith("-")]]
    try:
        train.main()
        return 0
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()


def wait_for_records(path: Path, n: int, timeout: float = 60) -> None:
    """Block until the metrics file at ``path`` holds ``n`` lines (a live run has logged that far)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never got {n} records")


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def cli(tmp_path):
    """The CLI in a subprocess (a true end-to-end run: ~3.5 s of interpreter start each)."""
    return lambda *o, **kw: run_cli(tmp_path, *o, **kw)


@pytest.fixture
def here(tmp_path, capsys, monkeypatch):
    """The same as :func:`cli`, through the entry point in this process: returns an object with
    ``returncode``, ``stdout`` and ``stderr`` like a finished subprocess."""
    from types import SimpleNamespace

    def call(*overrides: str, multirun: bool = False, check: bool = True, root: Path = tmp_path):
        monkeypatch.setenv("HOME", str(root))
        argv = [*(["-m"] if multirun else []), f"hydra.run.dir={root}/run", f"hydra.sweep.dir={root}/sweep",
                *overrides]
        code = run_in_process(argv)
        out = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"entry point failed ({code}):\n{out.out}\n{out.err}")
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call


def load_script(name: str):
    """A module of ``scripts/`` (not a package) by file name, for tests of its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
