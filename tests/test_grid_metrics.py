"""Grid values of a tuning grid per seed (breadth of the optimum, coupling of the best values), by hand."""
import math

import pytest

from precond.sweep.grid_metrics import best_value_slope, grid_values, near_optimal_fraction, point_of

GRID = {"lr": [0.001, 0.01, 0.1], "regularization.strength": [0.0001, 0.01, 1.0]}


def _summary(lr, lam, acc, seed=0, status="completed", steps=None):
    return {"status": status, "seed": seed, "val/acc": acc, "target_metric": "val/acc", "steps_to_target": steps,
            "overrides": [f"lr={lr!r}", f"regularization.strength={lam!r}", f"seed={seed}", "arm=a"]}


def test_the_point_is_read_from_the_overrides_and_matched_to_the_grid_values():
    assert point_of(_summary(0.01, 1.0, 0.9), GRID) == (0.01, 1.0)
    assert point_of({"overrides": ["lr=0.02", "regularization.strength=1.0"]}, GRID) is None  # not a grid value
    assert point_of({"overrides": ["lr=0.01"]}, GRID) is None  # a key missing


def test_near_optimal_fraction_counts_points_within_one_point_of_accuracy_and_ten_percent_of_loss():
    acc = {0: 0.95, 1: 0.945, 2: 0.939, 3: -math.inf}
    assert near_optimal_fraction(acc, "val/acc") == 2 / 4  # 0.95 and 0.945 (0.939 is 0.011 below)
    loss = {0: -math.log(0.10), 1: -math.log(0.109), 2: -math.log(0.111)}
    assert near_optimal_fraction(loss, "val/loss") == 2 / 3
    assert near_optimal_fraction({0: -math.inf}, "val/acc") == 0.0


@pytest.mark.parametrize("best_lambda,slope", [
    ({0.001: 1.0, 0.01: 0.01, 0.1: 0.0001}, -2.0),   # log10 λ* = -2 log10 lr - 6
    ({0.001: 0.01, 0.01: 0.01, 0.1: 0.01}, 0.0),      # decoupled
])
def test_best_value_slope_is_the_least_squares_slope_of_log_best_lambda_on_log_lr(best_lambda, slope):
    goodness = {(lr, lam): (1.0 if best_lambda[lr] == lam else 0.5) for lr in GRID["lr"]
                for lam in GRID["regularization.strength"]}
    assert best_value_slope(goodness, GRID) == pytest.approx(slope, abs=1e-12)
    assert best_value_slope(goodness, {"lr": GRID["lr"]}) is None


def test_grid_values_per_seed_count_a_diverged_run_as_worst_and_refuse_an_incomplete_grid():
    runs = [_summary(lr, lam, 0.9, seed=0) for lr in GRID["lr"] for lam in GRID["regularization.strength"]]
    runs[0] = _summary(0.001, 0.0001, 0.99, seed=0, status="diverged")  # its value must not count
    runs[1] = _summary(0.001, 0.01, 0.95, seed=0, steps=120.0)
    runs[2] = _summary(0.001, 1.0, 0.9, seed=0, steps=300.0)
    runs += [_summary(0.01, 0.01, 0.9, seed=1)]  # seed 1 has one point of nine
    values = grid_values(runs, GRID, "val/acc")
    assert values[0]["status"] == "completed"
    assert values[0]["grid/near_optimal_fraction"] == pytest.approx(1 / 9)  # only 0.95 is within 0.01 of 0.95
    assert values[0]["grid/target_fraction"] == pytest.approx(2 / 9)  # two runs held the target
    assert values[1]["status"] == "failed" and "8 grid points" in values[1]["error"]
