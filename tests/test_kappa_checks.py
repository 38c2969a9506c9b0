"""The κ check scripts: every claim names metrics their runs record, and the pipelines measure what they say."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from precond.sweep.verdicts import Side
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    return load_script(name)


def _claimed_metrics(claims) -> set[tuple[str, str]]:
    return {(side.arm, side.metric) for c in claims for side in c.sides if isinstance(side, Side)}


def test_kappa_plus_claims_name_metrics_every_arm_records():
    kp = _script("check_kappa_plus")
    x, y = kp.data()
    summaries = {arm: kp.run(arm, 0, x[:64], y[:64], steps=3)[0] for arm in kp.ARMS}
    for arm, metric in _claimed_metrics(kp.claims()):
        assert metric in summaries[arm], (arm, metric)
    # the matched BN test and the bound exist only where they are defined (no BatchNorm in the model)
    assert "end_ggn_kappa_plus_bnP" not in summaries["batchnorm"] and "end_bound_violations" in summaries["plain"]
    assert summaries["layernorm_no_act"]["end_ones_residual"] < 1e-12 < summaries["plain"]["end_row_residual"]


def test_kappa_trajectory_claims_name_metrics_and_P_changes_kappa(monkeypatch):
    kt = _script("check_kappa_trajectory")
    monkeypatch.setattr(kt, "LINEAR_STEPS", 200)
    monkeypatch.setattr(kt, "MLP_STEPS", 200)
    monkeypatch.setattr(kt, "EVERY", 50)
    runs = {arm: kt.linear_run(arm, lr, 0) for arm, lr in kt.LINEAR_ARMS.items()}
    x, y = kt.mlp_data()
    runs.update({arm: kt.mlp_run(arm, 0, x[:64], y[:64]) for arm in kt.MLP_ARMS})
    for arm, metric in _claimed_metrics(kt.claims()):
        assert metric in runs[arm], (arm, metric)
    assert runs["sgd"]["kappa_z"][0] == pytest.approx(runs["sgd"]["kappa_h"], rel=1e-9)  # P = I
    assert runs["adam"]["tail_max"] < runs["adam"]["kappa_h"] / 5  # an adaptive P changes κ
    assert all(math.isfinite(k) for k in runs["batchnorm"]["kappa"])


def test_kappa_scaling_measures_square_root_for_adam_and_flat_for_jacobi():
    ks = _script("check_kappa_scaling")
    model, x, y, solution, loss_star = ks.problem(2.0, data_seed=7)
    kappa_h, kappas = ks.preconditioned_kappas(model, x, y, solution, steps=300)
    assert 3e3 < kappa_h < 3e4
    assert 0.3 * kappa_h**0.5 < kappas["adam"] < 3 * kappa_h**0.5
    assert kappas["jacobi"] < 3 and kappas["standardization"] < 3


@pytest.mark.slow
@pytest.mark.parametrize(("name", "args"), [("check_kappa_scaling", ["--seeds", "1", "--steps", "200"]),
                                            ("check_kappa_trajectory", ["--seeds", "2"]),
                                            ("check_kappa_plus", ["--seeds", "2", "--steps", "50"]),
                                            ("check_local_rate", [])])
def test_check_script_writes_its_report(tmp_path, name, args):
    proc = subprocess.run([sys.executable, f"scripts/{name}.py", "--out", str(tmp_path), *args], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdicts = json.loads((tmp_path / "verdicts.json").read_text())
    assert verdicts and all(v["verdict"] for v in verdicts)
    text = (tmp_path / "comparison.md").read_text()
    assert "## Verdicts" in text
    for image in tmp_path.glob("*.png"):
        assert f"]({image.name})" in text
