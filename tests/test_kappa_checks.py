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


def test_exponent_law_measures_what_each_structure_can_represent():
    """One problem of each kind at 2 decades: a diagonal P with q = 1 flattens scale ill-conditioning, the full P
    with q = ½ takes the square root of correlation ill-conditioning, the diagonal P leaves it alone, and κ(H)
    is what the data generator spreads."""
    el = _script("check_exponent_law")
    scale = el.measure("scale", 2.0, 7, steps=300)
    corr = el.measure("correlation", 2.0, 7, steps=300)
    for row in (scale, corr):
        assert 30 < row["kappa_h"] < 300
    assert scale[("diagonal", 1.0)] < 3 < scale["kappa_h"] / 10
    assert 0.3 * corr["kappa_h"] ** 0.5 < corr[("full_matrix", 0.5)] < 3 * corr["kappa_h"] ** 0.5
    assert corr[("diagonal", 0.5)] > 0.5 * corr["kappa_h"]
    assert corr[("full_matrix", 0.0)] == pytest.approx(corr["kappa_h"], rel=1e-9)  # q = 0: P = I


def test_exponent_law_speed_rule_is_a_paired_slope_difference():
    """The structure-on-speed verdict: a diagonal arm whose steps grow as κ(H) against a matrix arm whose steps
    are flat holds on correlation problems; equal growth fails there and holds on scale problems."""
    el = _script("check_exponent_law")
    kh = [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]
    def rows(diag, matrix):
        return [{"spread": i, "seed": 0, "arm": arm, "kappa_h": k, "steps": f(k)} for i, k in enumerate(kh)
                for arm, f in (("diagonal", diag), ("full_matrix", matrix))]
    grows = rows(lambda k: 5 * k * (1.1 if k > 50 else 0.9), lambda k: 80.0 + (k % 7))
    same = rows(lambda k: 3 * k**0.5, lambda k: 2 * k**0.5 * (1.05 if k > 50 else 0.95))
    assert el.steps_verdict(grows, "full_matrix", "correlation").verdict == "holds"
    assert el.steps_verdict(same, "full_matrix", "correlation").verdict == "fails"
    assert el.steps_verdict(same, "full_matrix", "scale").verdict == "holds"
    assert el.steps_verdict(grows, "full_matrix", "scale").verdict == "fails"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "args"), [("check_kappa_scaling", ["--seeds", "1", "--steps", "200"]),
                                            ("check_exponent_law", ["--seeds", "1", "--steps", "200"]),
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
