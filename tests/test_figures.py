"""Figures that show what they claim, one test per figure kind, on small constructed sweeps: the chosen marker
sits exactly at the chosen point's value, a two-key grid is never averaged over its second key, losses get a
log colour scale with readable labels, faceted figures keep at most 3 panels per row with one panel per batch
size, and axes carry words, not metric keys."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest

from precond.sweep import grid_report, tuned_report
from precond.sweep.labels import metric_label
from precond.sweep.runs import RunRecord


def _run(arm: str, seed: int, value: float, **point) -> RunRecord:
    overrides = [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()]
    return RunRecord(Path(f"{arm}/{seed}"), {"status": "completed", "overrides": overrides, "val/loss": value,
                                             "arm": arm, "seed": seed})


@pytest.fixture
def captured(monkeypatch):
    """The figures a plot function saves, kept open for inspection instead of written."""
    figures = []
    for module in (tuned_report, grid_report):
        monkeypatch.setattr(module, "save_figure", lambda fig, path: figures.append(fig) or Path(path))
    return figures


def _momentum_arm():
    """lr × momentum: at the chosen momentum 0.9 the loss is low; at momentum 0.5 it is 100× higher, so a mean
    over momentum would put the chosen lr's point far above the chosen point's value."""
    grid = {"lr": [0.01, 0.1], "preconditioner.momentum": [0.5, 0.9]}
    runs = [_run("sgdm", s, (1.0 if m == 0.5 else 0.01) * (2 if lr == 0.01 else 1) * (1 + 0.1 * s),
                 lr=lr, **{"preconditioner.momentum": m})
            for lr in grid["lr"] for m in grid["preconditioner.momentum"] for s in (0, 1)]
    entry = {"grid": grid, "chosen": {"lr": 0.1, "preconditioner.momentum": 0.9}, "points": []}
    return runs, entry


def test_the_lr_curve_of_a_two_key_arm_is_its_slice_through_the_chosen_point_and_the_marker_sits_on_it(captured):
    runs, entry = _momentum_arm()
    points, fixed = tuned_report.sensitivity_slice(runs, entry, "val/loss")
    assert fixed == {"preconditioner.momentum": 0.9}
    assert points == {0.01: [0.02, pytest.approx(0.022)], 0.1: [0.01, pytest.approx(0.011)]}
    tuned_report.plot_lr_sensitivity({"sgdm": runs}, {"arms": {"sgdm": entry}}, "val/loss", Path("x.png"))
    (fig,) = captured
    ax = fig.axes[0]
    circles = [c for c in ax.collections if len(c.get_offsets()) == 1 and c.get_sizes()[0] == 120]
    assert len(circles) == 1
    chosen_value = statistics.fmean(v for v in points[0.1])
    assert tuple(circles[0].get_offsets()[0]) == pytest.approx((0.1, chosen_value))
    (line,) = ax.get_lines()
    assert line.get_label() == "sgdm (momentum=0.9)"
    assert ax.get_ylabel() == "final validation loss (tuning runs)" and ax.get_yscale() == "log"


def test_a_heat_map_of_a_loss_has_a_log_colour_scale_and_labels_that_contrast_with_their_cell(captured):
    runs, entry = _momentum_arm()
    runs.append(_run("sgdm", 2, 4.2e4, lr=0.01, **{"preconditioner.momentum": 0.5}))  # one diverged-looking cell
    selection = {"arms": {"sgdm": {**entry, "tuning_seeds": [0, 1]}}}
    grid_report.plot_grid_heatmaps({"sgdm": runs}, selection, "val/loss", Path("x.png"))
    (fig,) = captured
    image = fig.axes[0].images[0]
    assert type(image.norm).__name__ == "LogNorm"
    for text in fig.axes[0].texts:
        rgba = image.cmap(image.norm(float(text.get_text())))
        luminance = 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
        assert text.get_color() == ("black" if luminance > 0.45 else "white")
    assert {t.get_color() for t in fig.axes[0].texts} == {"black", "white"}  # both kinds of cell occur
    assert "validation loss" in fig.axes[-1].get_ylabel()  # the colour bar says what it measures


def test_an_accuracy_heat_map_stays_linear():
    assert type(grid_report.colour_norm("val/acc", np.array([0.1, 0.9]))).__name__ == "Normalize"


def test_confirmation_runs_of_batch_families_get_a_panel_per_batch_size_three_per_row(captured):
    confirmation, arms = {}, {}
    for batch in (1, 2, 4, 8, 32):
        for family in ("none", "bnp"):
            arm = f"{family}_b{batch}"
            arms[arm] = {"overrides": {"normalization_arm": family, "batch_size": batch, "steps": 100 * batch}}
            confirmation[arm] = [RunRecord(Path(f"{arm}/{s}"), {"status": "completed"},
                                           [{"step": t, "val/acc": 0.1 * t + 0.01 * s} for t in range(5)])
                                 for s in range(3)]
    tuned_report.plot_confirmation(confirmation, "val/acc", Path("x.png"), 0.9, {"arms": arms})
    (fig,) = captured
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["batch 1", "batch 2", "batch 4", "batch 8", "batch 32"]
    assert len({round(ax.get_position().x0, 3) for ax in visible}) == 3  # three columns
    by_family: dict = {}
    for ax in visible:
        colours = {line.get_label(): line.get_color() for line in ax.get_lines() if line.get_label() != "target"}
        assert len(colours) == 2 and len(set(map(str, colours.values()))) == 2
        for label, colour in colours.items():
            by_family.setdefault(label.split("_b")[0], set()).add(str(colour))
        median = ax.get_lines()[0].get_ydata()
        assert list(median) == pytest.approx([0.1 * t + 0.01 for t in range(5)])  # the median of seeds 0, 1, 2
    assert all(len(c) == 1 for c in by_family.values()) and len(by_family) == 2  # one colour per family
    assert visible[0].get_ylabel() == "validation accuracy"


def test_sensitivity_panels_wrap_at_three_per_row(captured):
    keys = {f"preconditioner.k{i}": [0.1, 1.0] for i in range(5)}
    arms, confirmation = {}, {}
    for key, values in keys.items():
        for v in values:
            arm = f"{key}={v}"
            arms[arm] = {"overrides": {key: v}}
            confirmation[arm] = [RunRecord(Path(arm), {"status": "completed", "val/loss": v + 0.1 * s, "seed": s})
                                 for s in range(2)]
    selection = {"arms": arms, "sensitivity": {key: {"s": [f"{key}={v}" for v in values]}
                                               for key, values in keys.items()}}
    assert len(grid_report.sensitivity_curves(confirmation, selection, "val/loss")) == 5
    grid_report.plot_sensitivity(confirmation, selection, "val/loss", Path("x.png"))
    (fig,) = captured
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len({round(ax.get_position().x0, 3) for ax in visible}) <= 3 < len(visible)
    assert fig.get_size_inches()[0] * 120 <= 1600  # readable at page width (pixels at the saved dpi)


@pytest.mark.parametrize(("key", "words"), [
    ("val/acc", "validation accuracy"), ("curvature/z/kappa", "κ of PᵀHP (in z)"),
    ("curvature/p/lam_max", "λmax of H (in p)"), ("new/metric", "new/metric")])
def test_metric_keys_read_as_words(key, words):
    assert metric_label(key) == words
