"""The tuning stage (grid per arm, selection rule, confirmation) and verdicts as data."""
import json
import statistics

import pytest

from precond.errors import ConfigError
from precond.sweep.tuning import Arm, NoEligiblePoint, PointResult, TuningSpec, at_edge, overrides_for, select
from tests.conftest import read_summary, run_in_process


def _run(status="completed", steps=None, value=0.5, metric="val/loss", seed=0):
    return {"status": status, "steps_to_target": steps, "target_metric": metric, metric: value, "seed": seed}


def _choose(points: dict, grid=None, metric="val/loss"):
    arm = Arm("a", {}, grid or {"lr": list(points)})
    return select(arm, [PointResult({"lr": lr}, runs) for lr, runs in points.items()])


def test_selection_chooses_the_lowest_median_among_points_that_reach_and_hold_on_every_seed():
    # a point that reached on one seed only is not eligible, however fast
    assert _choose({0.1: [_run(steps=50), _run()], 0.3: [_run(steps=300), _run(steps=400)]}).chosen == {"lr": 0.3}
    # among eligible points the lowest median wins (the median, not the mean: one slow seed does not decide)
    points = {0.1: [_run(steps=100), _run(steps=100), _run(steps=900)], 0.3: [_run(steps=200)] * 3}
    assert _choose(points).chosen == {"lr": 0.1}
    # nobody reaches and holds: the best median final value decides, and the basis says so
    choice = _choose({0.1: [_run(value=0.4)], 0.3: [_run(value=0.2)], 1.0: [_run(value=0.3)]})
    assert choice.chosen == {"lr": 0.3} and choice.basis.startswith("median final target metric")
    acc = {0.1: [_run(value=0.9, metric="val/acc")], 0.3: [_run(value=0.7, metric="val/acc")],
           1.0: [_run(value=0.8, metric="val/acc")]}
    assert _choose(acc).chosen == {"lr": 0.1}


def test_a_point_with_a_diverged_or_failed_seed_is_ineligible_and_an_arm_without_any_is_invalid():
    points = {0.1: [_run(value=0.9)], 0.3: [_run(steps=10), _run(status="diverged")], 1.0: [_run(status="failed")]}
    assert _choose(points).chosen == {"lr": 0.1}
    assert PointResult({"lr": 0.3}, points[0.3]).standing() == ("ineligible", "a tuning run ended diverged")
    with pytest.raises(NoEligiblePoint, match=r"^arm a: no grid point is eligible"):
        _choose({0.1: [_run(status="diverged")], 0.3: [_run(status="failed")]})


def test_a_run_that_reached_but_lost_the_target_is_not_held():
    lost = {"status": "completed", "steps_to_target": None, "steps_to_first_hit": 50, "target_metric": "val/loss",
            "val/loss": 1.9}
    assert PointResult({"lr": 1.0}, [lost, _run(steps=60)]).standing()[0] == "completed"
    assert _choose({1.0: [lost, _run(steps=60)], 0.03: [_run(steps=400)] * 2}).chosen == {"lr": 0.03}


def test_a_choice_at_the_edge_of_the_grid_is_flagged():
    assert _choose({0.1: [_run(value=0.1)], 0.3: [_run(value=0.2)], 1.0: [_run(value=0.3)]}).at_edge == ["lr"]
    assert _choose({0.1: [_run(value=0.3)], 0.3: [_run(value=0.1)], 1.0: [_run(value=0.3)]}).at_edge == []
    assert at_edge({"lr": 1.0, "momentum": 0.9}, {"lr": [0.1, 1.0], "momentum": [0.0, 0.5, 0.9]}) == ["momentum"]


def test_an_arm_grid_is_the_cartesian_product_and_replaces_shared_keys():
    spec = TuningSpec(arms={"sgd": {"overrides": {"preconditioner": "sgd"}, "grid": {"lr": [1.0, 2.0]}},
                            "adam": {"overrides": {"preconditioner": "adam"}}},
                      grid={"lr": [0.1, 0.2, 0.3], "preconditioner.momentum": [0.0, 0.9]})
    sgd, adam = spec.arm_list
    assert len(sgd.points()) == 4 and len(adam.points()) == 6
    assert {p["lr"] for p in sgd.points()} == {1.0, 2.0}
    assert overrides_for(sgd, sgd.points()[0], 7, "tuning") == [
        "preconditioner=sgd", "lr=1.0", "preconditioner.momentum=0.0", "seed=7", "stage=tuning", "arm=sgd"]


@pytest.mark.parametrize("kwargs,key", [
    (dict(arms={}), "arms"),
    (dict(arms={"a": {}}, tuning_seeds=[0, 1], confirmation_seeds=[1, 2]), "confirmation_seeds"),
    (dict(arms={"a": {}}, tuning_seeds=[]), "tuning_seeds"),
    (dict(arms={"a": {}}, confirmation_seeds=[1.5]), "confirmation_seeds"),
    (dict(arms={"a": {"grid": {"lr": [0.1, -1]}}}), "arms.a.grid.lr"),
    (dict(arms={"a": {"grid": {"lr": []}}}), "arms.a.grid.lr"),
    (dict(arms={"a": {"grid": {"seed": [1, 2]}}}), "arms.a"),
    (dict(arms={"a": {"overide": {}}}), "arms.a"),
])
def test_a_bad_tuning_spec_names_its_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        TuningSpec(**kwargs)
    assert str(err.value).startswith(f"{key}:")


TINY = ["hydra/sweeper=tuned", "hydra.mode=MULTIRUN", "steps=40", "eval_every=10", "target.value=0.3",
        "preconditioner=sgd", "hydra.sweeper.tuning_seeds=[0,1]", "hydra.sweeper.confirmation_seeds=[5,6,7,8,9,10]"]
ARMS = ("hydra.sweeper.arms={fast:{grid:{lr:[0.1,0.3,1.0]}},slow:{grid:{lr:[1e-6,2e-6,4e-6]}},"
        "same_as_fast:{grid:{lr:[0.1,0.3,1.0]}},broken:{grid:{lr:[1e4,1e5]}}}")
CLAIMS = ("hydra.sweeper.claims=[{claim:built to hold,metric:val/loss,better:fast,than:slow},"
          "{claim:built to be equivalent,metric:val/loss,better:fast,than:same_as_fast,margin:0.05},"
          "{claim:built to be invalid,metric:val/loss,better:fast,than:broken}]")
EIGHT = "hydra.sweeper.confirmation_seeds=[5,6,7,8,9,10,11,12]"


def test_a_tiny_tuned_sweep_gets_holds_equivalent_and_invalid_where_built_to(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_in_process([*TINY, "target.value=0.55", EIGHT, ARMS, CLAIMS, f"hydra.sweep.dir={sweep}"]) == 0
    selection = json.loads((sweep / "selection.json").read_text())
    assert selection["arms"]["slow"]["chosen"] == {"lr": 4e-6} and selection["arms"]["slow"]["at_edge"] == ["lr"]
    assert selection["arms"]["fast"]["tuning_seeds"] == [0, 1]
    assert selection["arms"]["broken"]["chosen"] is None and "no grid point is eligible" in \
        selection["arms"]["broken"]["invalid"]
    assert [p["eligible"] for p in selection["arms"]["broken"]["points"]] == [False, False]
    # the chosen point is the best of its grid by the rule, read back from the tuning runs (dirs say what they hold)
    fast = {lr: [read_summary(sweep / "tuning" / "fast" / f"lr={lr}" / f"seed{s}") for s in (0, 1)]
            for lr in (0.1, 0.3, 1.0)}
    held = {lr: runs for lr, runs in fast.items() if all(r["steps_to_target"] is not None for r in runs)}
    assert len(held) >= 2 and selection["arms"]["fast"]["basis"].startswith("median steps")
    best = min(held, key=lambda lr: (statistics.median(r["steps_to_target"] for r in held[lr]),
                                     statistics.median(r["val/loss"] for r in held[lr])))
    assert selection["arms"]["fast"]["chosen"] == {"lr": best}
    confirmation = list((sweep / "confirmation").rglob("summary.json"))
    assert len(confirmation) == 3 * 8  # the invalid arm is never confirmed
    verdicts = json.loads((sweep / "verdicts.json").read_text())
    assert [v["verdict"] for v in verdicts] == ["holds", "equivalent", "invalid"]
    assert verdicts[2]["reason"].startswith("arm broken never trained")
    assert {"claim", "verdict", "rule", "reason", "n", "wins", "losses", "ties", "effect", "p_value",
            "p_adjusted", "evidence"} <= set(verdicts[0])
    assert verdicts[0]["p_adjusted"] == pytest.approx(2 * verdicts[0]["p_value"])  # Holm over the 2 tested claims
    report = (sweep / "comparison.md").read_text()
    assert "1 holds, 0 noninferior, 0 fails, 1 equivalent, 0 inconclusive, 1 invalid; 0 identities" in report
    assert "| built to hold | primary | **holds** |" in report and "⚠ edge of grid" in report
    assert "primary: 3 claims, smallest attainable adjusted p 0.023" in report  # as declared, before any run
    assert (sweep / "lr_sensitivity.png").stat().st_size > 0 and (sweep / "confirmation.png").stat().st_size > 0


def test_more_confirmation_seeds_reuse_every_earlier_run_and_judge_exactly_the_declared_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    arms, claims = ("hydra.sweeper.arms={fast:{grid:{lr:[0.1,0.3]}},slow:{grid:{lr:[1e-6,2e-6]}}}",
                    "hydra.sweeper.claims=[{claim:c,metric:val/loss,better:fast,than:slow}]")
    assert run_in_process([*TINY, arms, claims, f"hydra.sweep.dir={sweep}"]) == 0
    before = {p: p.read_bytes() for p in sweep.rglob("metrics.jsonl")}
    assert len(before) == 2 * 2 * 2 + 2 * 6
    more = "hydra.sweeper.confirmation_seeds=[5,6,7,8,9,10,11,12,13]"
    assert run_in_process([*TINY, more, arms, claims, f"hydra.sweep.dir={sweep}"]) == 0
    after = {p: p.read_bytes() for p in sweep.rglob("metrics.jsonl")}
    assert {p: after[p] for p in before} == before  # every earlier run reused as it was
    assert sorted(str(p.relative_to(sweep).parent) for p in set(after) - set(before)) == sorted(
        f"confirmation/{arm}/lr={lr}/seed{s}" for arm, lr in
        (("fast", json.loads((sweep / "selection.json").read_text())["arms"]["fast"]["chosen"]["lr"]),
         ("slow", 2e-6)) for s in (11, 12, 13))
    verdict = json.loads((sweep / "verdicts.json").read_text())[0]
    assert verdict["evidence"]["seeds"] == list(range(5, 14)) and verdict["n"] == 9
    # and back to six: the report judges those six only, though nine are on disk
    assert run_in_process([*TINY, arms, claims, f"hydra.sweep.dir={sweep}"]) == 0
    assert json.loads((sweep / "verdicts.json").read_text())[0]["evidence"]["seeds"] == [5, 6, 7, 8, 9, 10]


def test_a_rerun_tuned_sweep_redoes_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    argv = [*TINY, "hydra.sweeper.arms={a:{grid:{lr:[0.1,0.3]}}}", f"hydra.sweep.dir={sweep}"]
    assert run_in_process(argv) == 0
    before = {p: p.read_bytes() for p in sweep.rglob("metrics.jsonl")}
    assert run_in_process(argv) == 0
    assert {p: p.read_bytes() for p in sweep.rglob("metrics.jsonl")} == before


def test_a_sweep_list_on_the_command_line_of_a_tuned_sweep_is_refused(tmp_path, capsys):
    argv = [*TINY, "hydra.sweeper.arms={a:{}}", "batch_size=8,16", f"hydra.sweep.dir={tmp_path}/s"]
    assert run_in_process(argv) == 2
    assert "batch_size: expected one value" in capsys.readouterr().err
    assert not (tmp_path / "s" / "0").exists()


def test_a_claim_naming_an_unknown_arm_is_refused(tmp_path, capsys):
    argv = [*TINY, "hydra.sweeper.arms={a:{}}", "hydra.sweeper.claims=[{claim:x,metric:val/loss,better:a,than:b}]",
            f"hydra.sweep.dir={tmp_path}/s"]
    assert run_in_process(argv) == 2
    assert "hydra.sweeper.claims[0]: expected one of the arms ['a'], got 'b'" in capsys.readouterr().err


def test_with_wandb_the_tuned_sweep_logs_a_summary_run_holding_the_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    sweep = tmp_path / "sweep"
    argv = [*TINY, "hydra.sweeper.arms={a:{grid:{lr:[0.1,0.3]}},b:{grid:{lr:[1e-6,2e-6]}}}",
            "hydra.sweeper.claims=[{claim:a is lower,metric:val/loss,better:a,than:b}]", "logger=wandb",
            f"hydra.sweep.dir={sweep}"]
    assert run_in_process(argv) == 0
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # the summary run; each job's own run lives in its job dir
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in runs[0].rglob("*.table.json")}
    assert set(tables) == {"selection", "verdicts"}
    verdict = json.loads((sweep / "verdicts.json").read_text())[0]["verdict"]
    assert tables["verdicts"]["data"][0][:2] == ["a is lower", verdict]
    assert [row[0] for row in tables["selection"]["data"]] == ["a", "b"]
    assert len(list(runs[0].rglob("*.png"))) == 2
    config = (sweep / "tuning" / "a" / "lr=0.1" / "seed0" / "config.yaml").read_text()
    assert "stage: tuning" in config and "arm: a" in config  # every run's W&B config carries its stage and arm
    from tests.wandb_records import offline_run

    assert offline_run(sweep / "tuning" / "a" / "lr=0.1" / "seed0")["run"].job_type == "tuning"
    (confirmed,) = (sweep / "confirmation" / "a").glob("*/seed5")  # whichever lr the selection chose
    assert offline_run(confirmed)["run"].job_type == "confirmation"
    report = [a for a in offline_run(sweep)["artifacts"] if a.type == "report"]
    assert {e.path for e in report[0].manifest.contents} >= {"comparison.md", "selection.json", "verdicts.json"}


def test_the_optuna_example_tunes_on_the_value_the_entry_point_returns(tmp_path):
    """A handful of Optuna trials: each trial's objective is the run's final target metric."""
    import yaml

    sweep = tmp_path / "sweep"
    argv = ["experiment=optuna_lr", "steps=30", "eval_every=10", "hydra.sweeper.n_trials=4",
            f"hydra.sweep.dir={sweep}"]
    assert run_in_process(argv) == 0
    summaries = [read_summary(sweep / str(i)) for i in range(4)]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(s["val/loss"] for s in summaries)
    lrs = {o for s in summaries for o in s["overrides"] if o.startswith("lr=")}
    assert len(lrs) == 4  # four different lr values were tried


@pytest.mark.parametrize("arms,message", [
    ("hydra.sweeper.arms={a:{overrides:{preconditioner:sgdd}}}", "hydra.sweeper.arms.a: "),
    ("hydra.sweeper.arms={a:{},b:{grid:{preconditioner.momentum:[0.5,-1.0]}}}", "preconditioner.momentum"),
])
def test_a_bad_arm_is_refused_before_any_run(tmp_path, capsys, arms, message):
    tiny = [a for a in TINY if a != "preconditioner=sgd"]  # the arm sets it
    assert run_in_process([*tiny, arms, f"hydra.sweep.dir={tmp_path}/s"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "s" / "0").exists()  # not even the good arm ran


@pytest.mark.parametrize("extra,message", [
    (["hydra.sweeper.confirmation_seeds=[100]"],
     "hydra.sweeper.confirmation_seeds: expected a list of 3+ distinct values"),
    (["hydra.sweeper.confirmation_seeds=[100,100,100]"],
     "hydra.sweeper.confirmation_seeds: expected a list of 3+ distinct values"),
    (["hydra.sweeper.confirmation_seeds=[1,2,3]"], "hydra.sweeper.confirmation_seeds: expected seeds disjoint"),
    (["hydra.sweeper.tuning_seeds=[0,0]"], "hydra.sweeper.tuning_seeds: expected a list of 2+ distinct values"),
    (["hydra.sweeper.claims=[{claim:x,metric:val/acc,better:a,than:b}]"],
     "hydra.sweeper.claims[0].metric: 'val/acc' for arm a: a regression dataset records no accuracy"),
    (["hydra.sweeper.claims=[{claim:x,metric:curvature/z/kappa,better:a,than:b}]"],
     "hydra.sweeper.claims[0].metric: 'curvature/z/kappa' for arm a: curvature is not measured"),
    (["hydra.sweeper.arms={a:{overrides:{preconditioner:torch_optim}},b:{}}", "curvature=lanczos",
      "hydra.sweeper.claims=[{claim:x,metric:curvature/z/kappa,better:a,than:b}]"],
     "hydra.sweeper.claims[0].metric: 'curvature/z/kappa' for arm a: preconditioner=torch_optim (SGD) is a black "
     "box: it exposes no P"),
    (["hydra.sweeper.arms={a:{grid:{lr:[0.5]}},b:{overrides:{batch_size:5000},grid:{lr:[0.5]}}}"],
     "hydra.sweeper.arms.b at {'lr': 0.5}: batch_size: expected at most the training-split size 2048"),
    (["hydra.sweeper.arms={a:{grid:{lr:[0.5]}},b:{overrides:{target.metric:val/acc},grid:{lr:[0.5]}}}"],
     "hydra.sweeper.arms.b at {'lr': 0.5}: target.metric: expected one of"),
    (["hydra.sweeper.claims=[{claim:x,metric:val/loss,better:a,than:b,role:headline}]"],
     "hydra.sweeper.claims[0].role: expected one of ['primary', 'control', 'exploratory'], got 'headline'"),
    (["hydra.sweeper.claims=[{claim:x,metric:val/loss,better:a,than:b,margin:-1}]"],
     "hydra.sweeper.claims[0].margin: expected"),
    (["hydra.sweeper.claims=[{claim:x,metric:val/loss,better:a,than:b}]", "hydra.sweeper.confirmation_seeds=[5,6,7]"],
     "hydra.sweeper.confirmation_seeds: expected enough seeds for the 1 primary claims to reach adjusted p < 0.05 "
     "(the smallest attainable is 0.25), got 3 — use at least 6 confirmation seeds"),
    (["hydra.sweeper.claims=[{claim:x,metric:val/loss,better:a,than:b}]", "hydra.sweeper.stages=[6,12]"],
     "hydra.sweeper.stages: expected a last stage equal to the number of confirmation_seeds (6)"),
    (["hydra.sweeper.stages=[4,3,6]"], "hydra.sweeper.stages: expected at most 4 strictly increasing"),
    (["hydra.sweeper.data_draws=0"], "hydra.sweeper.data_draws: expected an integer in [1, 10]"),
])
def test_a_tuned_sweep_checks_seeds_claims_and_every_run_before_the_first_run(tmp_path, capsys, extra, message):
    arms = [] if extra[0].startswith("hydra.sweeper.arms") else ["hydra.sweeper.arms={a:{},b:{}}"]
    sets_preconditioner = "overrides:{preconditioner:" in extra[0]  # then the arm sets it, not the command line
    tiny = [a for a in TINY if not (sets_preconditioner and a == "preconditioner=sgd")]
    lr = [] if "grid:{lr:" in extra[0] else ["lr=0.5"]  # an arm's grid sets it: the command line may not
    argv = [*tiny, *lr, *arms, *extra, f"hydra.sweep.dir={tmp_path}/s"]
    assert run_in_process(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "s" / "0").exists()


def test_a_relative_target_is_set_from_the_tuned_baseline_and_used_for_selection_and_confirmation(tmp_path):
    from precond.sweep.tuning import relative_target

    sweep = tmp_path / "sweep"
    arms = "hydra.sweeper.arms={base:{grid:{lr:[1e-6,1e-5]}},fast:{grid:{lr:[0.1,0.3]}}}"
    argv = [*TINY, arms, "hydra.sweeper.target={relative_to:base,factor:0.9}", f"hydra.sweep.dir={sweep}"]
    assert run_in_process(argv) == 0
    selection = json.loads((sweep / "selection.json").read_text())
    base = [read_summary(p.parent) for p in (sweep / "tuning" / "base").rglob("summary.json")]
    per_seed = [min(s["val/loss"] for s in base if s["seed"] == seed) for seed in (0, 1)]
    assert selection["target"]["value"] == pytest.approx(statistics.median(per_seed) * 0.9)
    assert selection["target"]["value"] == pytest.approx(relative_target(base, 0.9))
    confirmation = [read_summary(p.parent) for p in (sweep / "confirmation").rglob("summary.json")]
    assert confirmation and all(s["target_value"] == pytest.approx(selection["target"]["value"]) for s in confirmation)
    # 0.9 × the slow baseline's best is well within reach of the fast arm: it is selected on reach and hold
    assert selection["arms"]["fast"]["basis"].startswith("median steps")
    assert selection["arms"]["base"]["basis"].startswith("median final")  # the baseline never beats 0.9 × itself


def test_a_relative_target_whose_baseline_never_completes_ends_with_one_line_and_the_tuning_table(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    arms = "hydra.sweeper.arms={base:{grid:{lr:[1e4,1e5]}},fast:{grid:{lr:[0.1,0.3]}}}"  # base diverges
    argv = [*TINY, arms, "hydra.sweeper.target={relative_to:base,factor:0.9}", f"hydra.sweep.dir={sweep}"]
    assert run_in_process(argv) == 1
    err = capsys.readouterr().err
    assert "error: hydra.sweeper.target.relative_to: the baseline arm of the relative target has no completed" in err
    assert "Traceback" not in err and not (sweep / "confirmation").exists()
    assert "(2 diverged)" in (sweep / "comparison.md").read_text()  # the tuning runs are reported


def test_tuning_only_overrides_are_limited_to_what_the_selection_never_reads():
    assert TuningSpec(arms={"a": {}}, tuning_overrides={"curvature.enabled": False}).tuning_overrides
    with pytest.raises(ConfigError, match=r"^tuning_overrides: expected a mapping of keys among"):
        TuningSpec(arms={"a": {}}, tuning_overrides={"lr": 0.1})  # that would tune one thing, confirm another
    arm = Arm("a", {}, {"lr": [0.1]})
    assert overrides_for(arm, {"lr": 0.1}, 0, "tuning", {"curvature.enabled": False})[1] == "curvature.enabled=false"
    assert "curvature.enabled=false" not in overrides_for(arm, {"lr": 0.1}, 100, "confirmation",
                                                          {"curvature.enabled": False})


def test_a_bad_relative_target_is_refused():
    with pytest.raises(ConfigError, match=r"^target.relative_to: expected one of \['a'\]"):
        TuningSpec(arms={"a": {}}, target={"relative_to": "b", "factor": 1.1})
    with pytest.raises(ConfigError, match=r"^target.factor"):
        TuningSpec(arms={"a": {}}, target={"relative_to": "a", "factor": -1})


def test_a_diverged_optuna_trial_is_a_failed_trial_and_the_best_comes_from_the_others(tmp_path, capsys):
    """One trial diverges (lr=1000), one completes: Optuna hears 'failed' for the first, with why."""
    import yaml

    sweep = tmp_path / "sweep"
    argv = ["-m", "experiment=optuna_lr", "preconditioner=sgd", "steps=30", "eval_every=10", "lr=choice(0.1,1000.0)",
            "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"]  # TPE with seed 0 draws lr 1000, 0.1, 1000
    assert run_in_process(argv) == 0
    summaries = [read_summary(sweep / str(i)) for i in range(3)]
    completed = [s for s in summaries if s["status"] == "completed"]
    diverged = [s for s in summaries if s["status"] == "diverged"]
    assert completed and diverged and all("lr=1000.0" in s["overrides"] for s in diverged)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(s["val/loss"] for s in completed) and best["best_params"] == {"lr": 0.1}
    out = capsys.readouterr()
    failed = [line for line in (out.out + out.err).splitlines() if "reported to Optuna as a failed trial" in line]
    assert len(failed) == len(diverged) and all("lr=1000.0" in m and "the run diverged (at step" in m for m in failed)
    assert "float-castable" not in out.out + out.err


def test_an_optuna_search_in_which_every_trial_diverges_ends_with_a_report_and_exit_1(tmp_path):
    import yaml

    sweep = tmp_path / "sweep"
    argv = ["-m", "experiment=optuna_lr", "preconditioner=sgd", "steps=30", "eval_every=10", "lr=choice(500.0,1000.0)",
            "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"]
    assert run_in_process(argv) == 1
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] is None and "no trial completed" in results["problem"]
    table = (sweep / "comparison.md").read_text()
    assert "| lr=500.0 |" in table and "| lr=1000.0 |" in table and table.count("0/1 (1 diverged)") == 2


def test_an_arm_with_one_grid_point_is_confirmed_without_tuning_runs(tmp_path):
    sweep = tmp_path / "sweep"
    arms = "hydra.sweeper.arms={fixed:{grid:{lr:[0.3]}},searched:{grid:{lr:[0.1,0.3]}}}"
    assert run_in_process([*TINY, arms, f"hydra.sweep.dir={sweep}"]) == 0
    selection = json.loads((sweep / "selection.json").read_text())
    assert selection["arms"]["fixed"]["chosen"] == {"lr": 0.3} and selection["arms"]["fixed"]["tuning_seeds"] == []
    assert "nothing to tune" in selection["arms"]["fixed"]["basis"]
    assert not (sweep / "tuning" / "fixed").exists()
    assert len(list((sweep / "tuning" / "searched").rglob("summary.json"))) == 4
    assert len(list((sweep / "confirmation" / "fixed").rglob("summary.json"))) == 6
    assert "none (one grid point)" in (sweep / "comparison.md").read_text()


def test_a_grid_claim_is_judged_per_tuning_seed_and_draws_the_heat_maps(tmp_path):
    """A claim with stage: tuning reads grid/* values of the whole lr × momentum grid per tuning seed; the
    per-seed values in its evidence are those recomputed here from the tuning runs on disk."""
    from precond.sweep.grid_metrics import grid_values

    sweep = tmp_path / "sweep"
    grid = "hydra.sweeper.grid={lr:[0.01,0.1,0.3],preconditioner.momentum:[0.0,0.5]}"
    arms = "hydra.sweeper.arms={a:{},b:{grid:{lr:[0.001,0.01,0.03]}}}"
    claims = ("hydra.sweeper.claims=[{claim:a is broader,stage:tuning,metric:grid/near_optimal_fraction,"
              "better:a,than:b,direction:higher}]")
    tuning_seeds = [0, 1, 2, 3, 4, 20]  # six: a claim on fewer could never reach p < 0.05 (refused)
    assert run_in_process([*TINY, "target.value=0.5", grid, arms, claims,
                           f"hydra.sweeper.tuning_seeds={tuning_seeds}".replace(" ", ""),
                           f"hydra.sweep.dir={sweep}"]) == 0
    verdict = json.loads((sweep / "verdicts.json").read_text())[0]
    assert verdict["evidence"]["seeds"] == tuning_seeds and verdict["n"] == 6
    selection = json.loads((sweep / "selection.json").read_text())
    for arm, side in (("a", "better"), ("b", "than")):
        runs = [read_summary(p.parent) for p in (sweep / "tuning" / arm).rglob("summary.json")]
        assert len(runs) == 6 * 6
        values = grid_values(runs, selection["arms"][arm]["grid"], "val/loss")
        assert verdict["evidence"][side]["values"] == [values[s]["grid/near_optimal_fraction"] for s in tuning_seeds]
    assert (sweep / "grid_heatmap.png").stat().st_size > 0
    assert "![grid heat map](grid_heatmap.png)" in (sweep / "comparison.md").read_text()


def test_a_sensitivity_curve_plots_and_states_the_median_of_each_value_from_the_confirmation_runs(tmp_path):
    sweep = tmp_path / "sweep"
    arms = ("hydra.sweeper.arms={m0:{overrides:{preconditioner.momentum:0.0}},"
            "m5:{overrides:{preconditioner.momentum:0.5}},m9:{overrides:{preconditioner.momentum:0.9}}}")
    assert run_in_process([*TINY, "hydra.sweeper.grid={lr:[0.1]}", arms,
                           "hydra.sweeper.sensitivity={preconditioner.momentum:{sgd:[m0,m5,m9]}}",
                           f"hydra.sweep.dir={sweep}"]) == 0
    assert not (sweep / "tuning").exists()  # one grid point per arm: nothing to tune
    medians = {arm: statistics.median(read_summary(sweep / "confirmation" / arm / "lr=0.1" / f"seed{s}")["val/loss"]
                                      for s in range(5, 11)) for arm in ("m0", "m5", "m9")}
    low, high = min(medians.values()), max(medians.values())
    report = (sweep / "comparison.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("- sgd, preconditioner.momentum") and "val/loss" in x)
    assert f"from {low:.4g}" in line and f"to {high:.4g}" in line
    assert (sweep / "sensitivity.png").stat().st_size > 0


GRID_ARMS = "hydra.sweeper.arms={a:{grid:{lr:[0.1,0.3]}},b:{grid:{lr:[0.1,0.3]}},one:{grid:{lr:[0.1]}}}"
CURVE_ARMS = "hydra.sweeper.arms={a:{overrides:{preconditioner.momentum:0.5}},b:{}}"


@pytest.mark.parametrize("arms,declaration,message", [
    (GRID_ARMS, "claims=[{claim:c,metric:grid/near_optimal_fraction,better:a,than:b}]", "go with stage: tuning"),
    (GRID_ARMS, "claims=[{claim:c,stage:tuning,metric:val/loss,better:a,than:b}]", "go with stage: tuning"),
    (GRID_ARMS, "claims=[{claim:c,stage:tuning,metric:grid/near_optimal_fraction,better:a,than:one}]",
     "its grid has one point"),
    (GRID_ARMS, "claims=[{claim:c,stage:later,metric:val/loss,better:a,than:b}]", "stage"),
    (CURVE_ARMS, "sensitivity={preconditioner.momentum:{sgd:[a,ghost]}}", "sensitivity.preconditioner.momentum.sgd"),
    (CURVE_ARMS, "sensitivity={preconditioner.momentum:{sgd:[a,b]}}", "arms.b.overrides.preconditioner.momentum"),
    (CURVE_ARMS, "sensitivity={preconditioner.momentum:{sgd:[a]}}", "at least two arms"),
], ids=["grid-metric-without-stage", "stage-without-grid-metric", "one-point-grid", "unknown-stage",
        "curve-unknown-arm", "curve-arm-without-value", "curve-of-one"])
def test_a_bad_grid_claim_or_sensitivity_curve_is_refused_before_any_run(tmp_path, capsys, arms, declaration,
                                                                         message):
    sweep = tmp_path / "sweep"
    six = "hydra.sweeper.tuning_seeds=[0,1,2,3,4,20]"  # enough for a grid claim to be attainable at all
    assert run_in_process([*TINY, six, arms, f"hydra.sweeper.{declaration}", f"hydra.sweep.dir={sweep}"]) == 2
    assert message in capsys.readouterr().err
    assert not list(sweep.rglob("summary.json"))


@pytest.mark.parametrize("extra,message", [
    (["hydra.sweeper.arms={a:{},b:{}}", "seed=5"],
     "seed: expected no value on the command line of a tuned sweep, got 'seed=5' — the tuned sweep sets each run's "
     "seed: change hydra.sweeper.tuning_seeds or confirmation_seeds"),
    (["hydra.sweeper.arms={a:{grid:{lr:[0.1,0.3]}},b:{}}", "lr=0.2"],
     "lr: expected no value on the command line of a tuned sweep, got 'lr=0.2' — arm a searches it in its grid"),
    (["hydra.sweeper.arms={a:{overrides:{preconditioner:adam}},b:{}}"],  # TINY says preconditioner=sgd
     "preconditioner: expected no value on the command line of a tuned sweep, got 'preconditioner=sgd' — arm "
     "a's overrides set it"),
])
def test_a_value_the_tuned_sweep_would_replace_is_refused_before_the_sweep_dir_exists(tmp_path, capsys, extra,
                                                                                       message):
    argv = [*TINY, *extra, f"hydra.sweep.dir={tmp_path}/s"]
    assert run_in_process(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("extra,message", [
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials: expected a positive integer, got 0"),
    (['hydra.sweeper.params.lr="tag(log, interval(1.0, 0.001))"'],
     "hydra.sweeper.params: expected a search space Optuna can sample, got an error before any trial ran: The "
     "`low` value must be smaller than or equal to the `high` value"),
])
def test_a_bad_optuna_search_is_one_line_before_any_trial(tmp_path, capsys, extra, message):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    assert run_in_process(["experiment=optuna_lr", "steps=5", *extra, f"hydra.sweep.dir={tmp_path}/s"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("override, kept", [("hydra.sweeper.arms={}", "adagrad, adam, adam_beta1_0"),
                                            ("hydra.sweeper.arms={sgd:{}}", "adagrad, adam, adam_beta1_0"),
                                            ("hydra.sweeper.grid={}", "(still holding lr)")])
def test_a_mapping_that_hydra_would_merge_into_the_experiments_is_refused(tmp_path, capsys, override, kept):
    """`arms={}` on an experiment merged into its arms and ran all of them; it is refused before the sweep dir."""
    argv = ["experiment=compare_preconditioners", override, f"hydra.sweep.dir={tmp_path}/s"]
    assert run_in_process(argv) == 2
    err = capsys.readouterr().err
    key = override.split("=")[0]
    assert f"error: {key}: expected the whole mapping" in err and kept in err and f"~{key}.NAME" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", [{"betas": [0.8, 0.99], "decoupled_weight_decay": True, "eps": 1e-08},
                                   [0.5, 2], 0.1, True, "adam"])
def test_an_arms_override_value_is_written_as_hydra_reads_it_back(value):
    """An arm's override (a mapping too: a torch_optim arm's preconditioner.options) goes to Hydra as text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from precond.sweep.tuning import format_value

    (override,) = OverridesParser.create().parse_overrides([f"key={format_value(value)}"])
    assert override.value() == value
