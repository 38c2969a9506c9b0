"""Time to target as reach-and-hold, on constructed curves (and through the loop)."""
from __future__ import annotations

import pytest

from precond.metrics import after_warmup, time_to_target


def _trace(values, every=10, seconds_per_step=0.5):
    return [(i * every, v, i * every * seconds_per_step) for i, v in enumerate(values)]


def test_a_dip_below_the_target_that_recovers_counts_from_the_last_crossing():
    out = time_to_target(_trace([1.0, 0.05, 0.5, 0.3, 0.05, 0.04]), "val/loss", 0.1)
    assert out["steps_to_first_hit"] == pytest.approx(10 * (1.0 - 0.1) / (1.0 - 0.05))  # interpolated in (0, 10)
    assert out["steps_to_target"] == pytest.approx(30 + 10 * (0.3 - 0.1) / (0.3 - 0.05))  # in (30, 40)
    assert out["seconds_to_target"] == pytest.approx(out["steps_to_target"] * 0.5)


def test_a_touch_that_does_not_hold_to_the_end_has_no_time_to_target():
    out = time_to_target(_trace([1.0, 0.05, 0.5, 0.3]), "val/loss", 0.1)
    assert out["steps_to_target"] is None and out["seconds_to_target"] is None
    assert out["steps_to_first_hit"] is not None  # the first crossing is still recorded


def test_a_target_hit_only_at_the_last_evaluation_counts():
    out = time_to_target(_trace([0.5, 0.4, 0.3, 0.09]), "val/loss", 0.1)
    assert out["steps_to_target"] == pytest.approx(20 + 10 * (0.3 - 0.1) / (0.3 - 0.09))
    assert out["steps_to_target"] == out["steps_to_first_hit"]


def test_accuracy_targets_are_reached_from_below_and_a_start_on_target_is_zero():
    out = time_to_target(_trace([0.2, 0.6, 0.95, 0.97]), "val/acc", 0.9)
    assert out["steps_to_target"] == pytest.approx(10 + 10 * (0.6 - 0.9) / (0.6 - 0.95))
    assert time_to_target(_trace([0.01, 0.01]), "val/loss", 0.1)["steps_to_target"] == 0.0


def test_a_diverged_run_or_no_target_has_no_time():
    assert time_to_target(_trace([1.0, 0.05]), "val/loss", 0.1, held=False)["steps_to_target"] is None
    assert time_to_target(_trace([1.0, 0.05]), "val/loss", None)["steps_to_target"] is None
    assert time_to_target(_trace([1.0, float("nan"), 0.05]), "val/loss", 0.1)["steps_to_target"] == 20.0


def test_a_warm_up_is_reported_beside_the_total():
    assert after_warmup({"steps_to_target": 160.0, "steps_to_first_hit": 90.0}, 100) == {
        "warmup_steps": 100, "steps_to_target_after_warmup": 60.0, "steps_to_first_hit_after_warmup": 0.0}


def test_the_loop_records_reach_and_hold(tmp_path):
    import json

    import torch

    from precond import build_optimizer
    from precond.data import synthetic
    from precond.models import linear
    from precond.run.files import RunLog
    from precond.run.loop import LoopSettings, train

    data = synthetic(n_train=256, n_val=64, n_test=0, features=8)
    torch.manual_seed(0)
    model = linear(data.in_shape, 1)
    opt = build_optimizer(model.parameters(), "adam", lr=0.05)
    settings = LoopSettings(steps=200, batch_size=32, eval_every=10, progress=False, target={"value": 0.3})
    with RunLog(tmp_path, {}) as log:
        summary = train(model, opt, data, settings, log)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trace = [(r["step"], r.get("val/loss"), r["time/train_s"]) for r in records]
    assert summary["steps_to_target"] == time_to_target(trace, "val/loss", 0.3)["steps_to_target"]
    assert summary["steps_to_target"] is not None and summary["steps_to_first_hit"] <= summary["steps_to_target"]


@pytest.mark.parametrize("warmup", [0, 20])
def test_a_bnp_run_records_its_times_after_the_warm_up_also_when_the_warm_up_is_zero(here, tmp_path, warmup):
    """steps_to_target_after_warmup = max(steps_to_target − bnp_warmup, 0): at warm-up 0 it is the total (a
    sensitivity curve over the warm-up must not lose its first point)."""
    from tests.conftest import read_summary

    here("preconditioner=bnp", "model=mlp", "dataset=digits", "steps=60", "eval_every=5", "lr=0.01",
         "target.value=0.5", f"preconditioner.bnp_warmup={warmup}", "progress=false")
    summary = read_summary(tmp_path / "run")
    assert summary["warmup_steps"] == warmup and summary["steps_to_target"] is not None
    assert summary["steps_to_target_after_warmup"] == max(summary["steps_to_target"] - warmup, 0.0)
