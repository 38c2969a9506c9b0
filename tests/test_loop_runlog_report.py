"""Training loop, run files and the sweep report, in-process."""
import json
import math
import statistics
import time

import pytest
import torch

from precond import build_optimizer
from precond.data import synthetic
from precond.metrics import target_reached
from precond.models import linear
from precond.run.files import RunLog, write_summary
from precond.run.loop import LoopSettings, evaluate, train
from precond.sweep.report import compare, summarize
from precond.sweep.runs import load_runs


def _fit(tmp_path, lr=0.1, precond="adam", monitors=(), steps=40, target=None, divergence_factor=1e6):
    data = synthetic(n_train=256, n_val=64, n_test=64, features=8)
    torch.manual_seed(0)
    model = linear(data.in_shape, 1)
    opt = build_optimizer(model.parameters(), precond, lr=lr)
    settings = LoopSettings(steps=steps, batch_size=32, eval_every=10, progress=False, target={"value": target},
                            divergence_factor=divergence_factor)
    with RunLog(tmp_path, {}) as log:
        summary = train(model, opt, data, settings, log, monitors=monitors)
        log.write_summary(summary)
    return summary, [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_and_target_is_found(tmp_path):
    summary, records = _fit(tmp_path, target=0.5)
    assert records[-1]["val/loss"] < records[0]["val/loss"] / 1.5
    i = next(i for i, r in enumerate(records) if r["val/loss"] <= 0.5)  # never lost again on this smooth problem
    assert all(r["val/loss"] <= 0.5 for r in records[i:]) and i > 0
    before, after = records[i - 1], records[i]
    share = (before["val/loss"] - 0.5) / (before["val/loss"] - after["val/loss"])  # linear in the metric
    assert summary["steps_to_target"] == pytest.approx(before["step"] + share * (after["step"] - before["step"]))
    assert summary["seconds_to_target"] == pytest.approx(
        before["time/train_s"] + share * (after["time/train_s"] - before["time/train_s"]))
    assert before["step"] < summary["steps_to_target"] <= after["step"]


def test_divergence_ends_the_run_with_status_diverged(tmp_path):
    summary, records = _fit(tmp_path, lr=1e6, precond="sgd", steps=200)
    assert summary["status"] == "diverged" and summary["steps"] < 200
    assert records[-1]["diverged"] is True and records[-1]["train/batch_loss"] is None  # non-finite -> null


def test_a_finite_but_exploding_loss_also_counts_as_diverged(tmp_path):
    # SGD above its stable step: the loss grows geometrically but stays finite for 10 steps
    summary, records = _fit(tmp_path, precond="sgd", lr=3.0, divergence_factor=10.0)
    assert summary["status"] == "diverged" and summary["steps"] == 10
    assert records[-1]["diverged"] is True
    assert 10 * records[0]["train/loss"] < records[-1]["train/batch_loss"] < float("inf")


def test_monitor_time_is_excluded_from_train_time(tmp_path):
    def slow_monitor(step, final):
        time.sleep(0.05)
        return {"monitor/step": step}

    summary, records = _fit(tmp_path, monitors=(slow_monitor,))
    assert records[-1]["monitor/step"] == 40
    assert records[-1]["time/monitor_s"] >= 0.25
    assert records[-1]["time/train_s"] < records[-1]["time/monitor_s"]


def test_train_loss_is_the_eval_loss_on_a_fixed_training_subset(tmp_path):
    summary, records = _fit(tmp_path)
    data = synthetic(n_train=256, n_val=64, n_test=64, features=8)
    torch.manual_seed(0)
    initial = torch.nn.functional.mse_loss(linear(data.in_shape, 1)(data.x_train), data.y_train)
    assert records[0]["train/loss"] == pytest.approx(float(initial), rel=1e-5) and "train/batch_loss" in records[1]
    assert summary["train/loss"] == records[-1]["train/loss"]


def test_evaluate_matches_direct_loss_and_accuracy():
    data = synthetic(task="classification", n_train=100, n_val=50)
    model = linear(data.in_shape, data.num_outputs)
    got = evaluate(model, torch.nn.functional.cross_entropy, data.x_val, data.y_val, "classification", 7)
    with torch.no_grad():
        out = model(data.x_val)
    assert got["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(out, data.y_val)), rel=1e-5)
    assert got["acc"] == pytest.approx(float((out.argmax(1) == data.y_val).float().mean()))


def test_target_direction_follows_the_metric():
    assert target_reached("val/loss", 0.1, 0.2) and not target_reached("val/loss", 0.3, 0.2)
    assert target_reached("val/acc", 0.9, 0.8) and not target_reached("val/acc", 0.7, 0.8)
    assert not target_reached("val/loss", float("nan"), 0.2)


def test_runlog_writes_failed_summary_on_error_and_keeps_metrics(tmp_path):
    with pytest.raises(RuntimeError):
        with RunLog(tmp_path, {}) as log:
            log.log({"step": 0, "train/loss": 1.0})
            raise RuntimeError("boom")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom" in summary["error"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["train/loss"] == 1.0


def test_summary_turns_non_finite_values_into_null(tmp_path):
    written = write_summary(tmp_path, {"val/loss": float("nan"), "x": float("inf"), "ok": 1.5})
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == written == {"val/loss": None, "x": None, "ok": 1.5}


def test_report_groups_by_varying_overrides_and_averages_seeds(tmp_path):
    finals = {("adam", 0): 0.1, ("adam", 1): 0.3, ("sgd", 0): 0.5, ("sgd", 1): 0.7}
    for i, ((name, seed), final) in enumerate(finals.items()):
        run = tmp_path / str(i)
        run.mkdir()
        write_summary(run, {"status": "completed", "val/loss": final, "overrides": [f"preconditioner={name}",
                            f"seed={seed}", "steps=10"], "steps_to_target": 10 * (i + 1),
                            "seconds_to_target": 0.1, "target_metric": "val/loss", "target_value": 1.0})
        (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "val/loss": final + 1 / (s + 1)})
                                                     for s in range(3)))
    runs = load_runs(tmp_path)
    assert [r.label for r in runs] == ["preconditioner=adam"] * 2 + ["preconditioner=sgd"] * 2
    rows = {r.label: r for r in summarize(runs, "val/loss")}
    assert rows["preconditioner=adam"].final_mean == pytest.approx(0.2)
    assert rows["preconditioner=adam"].final_std == pytest.approx(statistics.stdev([0.1, 0.3]))
    assert rows["preconditioner=sgd"].steps_to_target == pytest.approx(35)
    table = compare(tmp_path, quiet=True)
    assert "| preconditioner=adam | — | 2/2 | 0.2 ± 0.14 |" in table  # lr: no config.yaml in these dirs
    assert (tmp_path / "comparison.png").exists()


def test_curvature_is_measured_at_the_last_step_when_steps_is_not_a_multiple_of_every(tmp_path):
    """steps=30 with every=500: step 0 and the final state (the one users read) are both measured."""
    from precond.curvature import CurvatureSettings
    from precond.run.loop import loss_function
    from precond.run.monitors import CurvatureMonitor

    data = synthetic(n_train=256, n_val=64, n_test=0, features=4)
    torch.manual_seed(0)
    model = linear(data.in_shape, data.num_outputs)
    opt = build_optimizer(model.parameters(), "adam", lr=0.01)
    monitor = CurvatureMonitor(model, loss_function(data.task), data.x_train, data.y_train, opt,
                               CurvatureSettings(method="dense", every=500, layers=False), 32)
    settings = LoopSettings(steps=30, batch_size=32, eval_every=10, progress=False)
    with RunLog(tmp_path, {}) as runlog:
        summary = train(model, opt, data, settings, runlog, monitors=(monitor,))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    measured = [r["step"] for r in records if "curvature/p/lam_max" in r]
    assert measured == [0, 30]
    assert "curvature/z/kappa" in records[-1] and summary["curvature/p/kappa"] == records[-1]["curvature/p/kappa"]


@pytest.mark.parametrize("schedule,kwargs,expected", [
    # closed forms of η_k (base η = 0.1, T = 20 steps)
    ("warmup", dict(warmup_steps=5, start_factor=0.2), lambda k: 0.1 * (0.2 + 0.8 * min(k, 5) / 5)),
    ("cosine", dict(warmup_steps=0, min_factor=0.1),
     lambda k: 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * k / 20)) / 2),
    ("step", dict(step_size=7, gamma=0.5), lambda k: 0.1 * 0.5 ** (k // 7)),
    ("constant", dict(), lambda k: 0.1),
])
def test_schedules_log_the_closed_form_learning_rate(tmp_path, schedule, kwargs, expected):
    from precond import schedules

    data = synthetic(n_train=256, n_val=64, n_test=0, features=4)
    model = linear(data.in_shape, data.num_outputs)
    opt = build_optimizer(model.parameters(), "sgd", lr=0.1)
    scheduler = getattr(schedules, schedule)(opt, 20, **kwargs)
    settings = LoopSettings(steps=20, batch_size=32, eval_every=1, progress=False)
    with RunLog(tmp_path, {}) as runlog:
        train(model, opt, data, settings, runlog, scheduler=scheduler)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 21
    for r in records:
        assert r["lr"] == pytest.approx(expected(r["step"]), rel=1e-12, abs=1e-15), r["step"]


def test_curvature_at_start_false_skips_step_zero_only(tmp_path):
    from precond.curvature import CurvatureSettings
    from precond.run.loop import loss_function
    from precond.run.monitors import CurvatureMonitor

    data = synthetic(n_train=256, n_val=64, n_test=0, features=4)
    torch.manual_seed(0)
    model = linear(data.in_shape, 1)
    opt = build_optimizer(model.parameters(), "adam", lr=0.01)
    monitor = CurvatureMonitor(model, loss_function(data.task), data.x_train, data.y_train, opt,
                               CurvatureSettings(every=10, spaces=("p",), layers=False, at_start=False), 32)
    settings = LoopSettings(steps=20, batch_size=32, eval_every=10, progress=False)
    with RunLog(tmp_path, {}) as log:
        train(model, opt, data, settings, log, monitors=(monitor,))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [("curvature/p/lam_max" in r) for r in records] == [False, True, True]
