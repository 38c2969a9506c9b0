"""Smoke-run every experiment end to end with a few steps (slow: make test-slow)."""
from pathlib import Path

import pytest

from precond.train import CONF_DIR
from tests.conftest import read_summary

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_end_to_end(cli, tmp_path, experiment):
    text = (Path(CONF_DIR) / "experiment" / f"{experiment}.yaml").read_text()
    extra = ["curvature.every=2"] if "override /curvature" in text else []
    proc = cli(f"experiment={experiment}", "steps=4", "eval_every=2", *extra)
    summaries = [read_summary(p.parent) for p in (tmp_path / "sweep").glob("*/summary.json")]
    # diverged is a legitimate outcome (gradnorm in z at large λ is one of the findings)
    assert summaries and all(s["status"] in ("completed", "failed", "diverged") for s in summaries)
    assert any(s["status"] == "completed" for s in summaries)
    failed = [s for s in summaries if s["status"] == "failed"]
    # the only expected failures: BatchNorm at batch size 1, refused before training
    assert all("batch_size" in s["error"] for s in failed), failed
    assert (tmp_path / "sweep" / "comparison.md").exists() and "| run |" in proc.stdout
