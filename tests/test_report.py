"""The plain sweep report a researcher reads at a glance: hyperparameters in the table, one file per
metric, a panel grid, log axes, the target as a line, and the runs the plot cannot show listed."""
import json

import pytest
import yaml

from precond.run.files import write_summary
from precond.sweep import report
from precond.sweep.report import compare, main
from tests.conftest import run_in_process


def _fake_run(path, overrides, status="completed", final=0.1, lr=0.01, metric="val/loss", kappa=None, error=None):
    path.mkdir(parents=True)
    summary = {"status": status, metric: final if status == "completed" else None, "overrides": overrides,
               "steps_to_target": None, "seconds_to_target": None, "target_metric": "val/loss",
               "target_value": 0.05, "seed": 0, "steps": 30}
    if kappa is not None:
        summary["curvature/z/kappa"] = kappa
    if error:
        summary["error"] = error
    write_summary(path, summary)
    steps = range(0, 31, 10) if status == "completed" else range(0, 11, 10)
    (path / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, metric: final * 10 ** (1 - s / 30),
                                                              "curvature/z/kappa": 1e3 / (s + 1)}) for s in steps))
    (path / "config.yaml").write_text(yaml.safe_dump({"lr": lr, "preconditioner": {"name": "adam", "eps": 1e-8}}))


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report saves, kept open for inspection."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        fig.savefig(path)
        return path

    monkeypatch.setattr(report, "save_figure", keep)
    return kept


def test_the_table_shows_the_learning_rate_each_arm_used(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_in_process(["-m", "preconditioner=sgd,adam,adagrad", "steps=10", "eval_every=5",
                           f"hydra.sweep.dir={sweep}"]) == 0
    table = (sweep / "comparison.md").read_text()
    # no lr on the command line: each arm ran at its preconditioner's default for model=linear
    defaults = yaml.safe_load((report.Path(__file__).parents[1] / "conf/model/linear.yaml").read_text())["default_lr"]
    for arm in ("sgd", "adam", "adagrad"):
        assert f"| preconditioner={arm} | {defaults[arm]:.4g} |" in table
    assert table.splitlines()[4].startswith("| run | lr |")  # after the title and what was swept


def test_a_hyperparameter_that_varies_gets_its_own_column(tmp_path):
    _fake_run(tmp_path / "0", ["preconditioner.eps=1e-8"], lr=0.01)
    _fake_run(tmp_path / "1", ["preconditioner.eps=1e-3"], lr=0.01)
    (tmp_path / "1" / "config.yaml").write_text(yaml.safe_dump({"lr": 0.01, "preconditioner": {"eps": 1e-3}}))
    table = compare(tmp_path, quiet=True)
    assert "| run | lr | preconditioner.eps |" in table and "| 0.01 | 0.001 |" in table


def test_another_metric_goes_to_its_own_files_and_leaves_the_default_report(tmp_path, capsys):
    for i, lr in enumerate((0.01, 0.1)):
        _fake_run(tmp_path / str(i), [f"lr={lr}"], lr=lr, kappa=10.0 * (i + 1))
    main([str(tmp_path)])
    default = (tmp_path / "comparison.md").read_bytes()
    main([str(tmp_path), "--metric", "curvature/z/kappa"])
    assert (tmp_path / "comparison.md").read_bytes() == default
    assert "final curvature/z/kappa" in (tmp_path / "comparison_curvature-z-kappa.md").read_text()
    assert (tmp_path / "comparison_curvature-z-kappa.png").stat().st_size > 1000


def test_five_panels_make_a_grid_that_fits_a_page(tmp_path, figures):
    for i, model in enumerate(("a", "b", "c", "d", "e")):
        for j, lr in enumerate((0.01, 0.1)):
            _fake_run(tmp_path / f"{i}{j}", [f"model.kind={model}", f"lr={lr}"], lr=lr)
    compare(tmp_path, quiet=True)
    (fig,) = figures
    width_px = fig.get_size_inches()[0] * 120  # save_figure's dpi
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 5 and width_px <= 1800
    assert len({round(ax.get_position().y0, 2) for ax in visible}) == 2  # two rows, not one wide row


@pytest.mark.parametrize("metric,log", [("val/loss", True), ("curvature/z/kappa", True), ("val/acc", False)])
def test_losses_and_kappa_are_plotted_on_log_axes(tmp_path, figures, metric, log):
    _fake_run(tmp_path / "0", ["lr=0.1"], metric=metric, final=0.5)
    compare(tmp_path, metric=metric, quiet=True)
    assert (figures[0].axes[0].get_yscale() == "log") is log


def test_the_target_is_drawn_as_a_line_on_its_own_metric(tmp_path, figures):
    _fake_run(tmp_path / "0", ["lr=0.1"])
    compare(tmp_path, quiet=True)
    lines = [line for line in figures[0].axes[0].get_lines() if "target" in line.get_label()]
    assert len(lines) == 1 and set(lines[0].get_ydata()) == {0.05}


def test_failed_and_diverged_jobs_are_listed_under_the_plot(tmp_path, figures):
    _fake_run(tmp_path / "0", ["lr=0.01"])
    _fake_run(tmp_path / "1", ["lr=10"], status="diverged", lr=10)
    _fake_run(tmp_path / "2", ["lr=-1"], status="failed", lr=0.02, error="lr: expected a number > 0, got -1")
    compare(tmp_path, quiet=True)
    text = "\n".join(t.get_text() for t in figures[0].texts)
    assert "lr=10 (seed 0): diverged" in text and "lr=-1 (seed 0): failed — lr: expected a number > 0" in text
    md = (tmp_path / "comparison.md").read_text()
    assert "Not shown (or cut short) in the plot" in md and "lr=10 (seed 0): diverged" in md


def test_another_metric_on_a_tuned_sweep_goes_beside_its_tuned_report(tmp_path):
    sweep = tmp_path / "sweep"
    argv = ["hydra/sweeper=tuned", "hydra.mode=MULTIRUN", "steps=20", "eval_every=10", "preconditioner=sgd",
            "hydra.sweeper.arms={a:{grid:{lr:[0.1,0.3]}},b:{grid:{lr:[0.01,0.03]}}}",
            "hydra.sweeper.claims=[{claim:a is lower,metric:val/loss,better:a,than:b}]",
            "hydra.sweeper.tuning_seeds=[0,1]", "hydra.sweeper.confirmation_seeds=[5,6,7,8,9,10]",
            f"hydra.sweep.dir={sweep}"]
    assert run_in_process(argv) == 0
    tuned = (sweep / "comparison.md").read_bytes()
    main([str(sweep), "--metric", "val/loss"])  # the target metric itself: still its own file on a tuned sweep
    assert (sweep / "comparison.md").read_bytes() == tuned
    table = (sweep / "comparison_val-loss.md").read_text()
    assert "final val/loss" in table and "stage=tuning" in table and "stage=confirmation" in table


@pytest.mark.parametrize("content,message", [
    ('["not", "a", "mapping"]', "selection.json: expected a mapping, got list"),
    ('{"arms": ["x"]}', "selection.json: arms: expected a mapping of arm → its selection, got list"),
    ('{"arms": {"adam": 3}}', "selection.json: arms.adam: expected a mapping, got int"),
    ('{"arms": {}, "claims": "adam beats sgd"}', "selection.json: claims: expected a list of claims, got str"),
    ('{"arms": {}, "target": 0.5}', "selection.json: target: expected a mapping or null, got float"),
    ('{"arms": {', "selection.json is unreadable"),
])
def test_a_damaged_selection_file_is_one_line_naming_its_key(tmp_path, capsys, content, message):
    from precond.sweep.report import main

    (tmp_path / "selection.json").write_text(content)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_plain_sweep_report_says_what_was_swept(tmp_path):
    """The title names the sweep and the first paragraph what varied, on what model and data, for how long."""
    assert run_in_process(["-m", "preconditioner=sgd,adam", "seed=0,1", "steps=10", "name=demo",
                           f"hydra.sweep.dir={tmp_path}/s"]) == 0
    text = (tmp_path / "s" / "comparison.md").read_text()
    assert text.startswith("# Sweep demo (s)\n")
    assert ("**What was swept.** 4 runs over preconditioner ∈ {adam, sgd}; seed ∈ {0, 1}, on model `linear` "
            "(33 parameters) and dataset `synthetic`; 10 steps per completed run.") in text
    compare(tmp_path / "s", quiet=True)  # rewriting it gives the same text
    assert (tmp_path / "s" / "comparison.md").read_text() == text
