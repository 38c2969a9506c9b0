"""The tuning stage (grid per arm, selection rule, confirmation) and verdicts as data."""
import json
import math

import pytest

from precond.errors import ConfigError
from precond.sweep.tuning import Arm, PointResult, TuningSpec, at_edge, overrides_for, select
from precond.sweep.verdicts import Claim, judge
from tests.conftest import read_summary, run_in_process


def _run(status="completed", steps=None, value=0.5, metric="val/loss", seed=0):
    return {"status": status, "steps_to_target": steps, "target_metric": metric, metric: value, "seed": seed}


def _choose(points: dict, grid=None, metric="val/loss"):
    arm = Arm("a", {}, grid or {"lr": list(points)})
    return select(arm, [PointResult({"lr": lr}, runs) for lr, runs in points.items()])


def test_selection_rule_reached_first_then_steps_then_final_value():
    # more seeds reaching the target beats fewer steps on one seed
    assert _choose({0.1: [_run(steps=50), _run()], 0.3: [_run(steps=300), _run(steps=400)]}).chosen == {"lr": 0.3}
    # same count reached: fewer mean steps
    assert _choose({0.1: [_run(steps=200)], 0.3: [_run(steps=100)], 1.0: [_run(steps=150)]}).chosen == {"lr": 0.3}
    # nobody reaches: the best final value decides
    assert _choose({0.1: [_run(value=0.4)], 0.3: [_run(value=0.2)], 1.0: [_run(value=0.3)]}).chosen == {"lr": 0.3}
    # accuracy is better when higher
    acc = {0.1: [_run(value=0.9, metric="val/acc")], 0.3: [_run(value=0.7, metric="val/acc")],
           1.0: [_run(value=0.8, metric="val/acc")]}
    assert _choose(acc).chosen == {"lr": 0.1}


def test_a_point_with_a_diverged_or_failed_seed_ranks_below_any_finished_point():
    points = {0.1: [_run(value=0.9)], 0.3: [_run(steps=10), _run(status="diverged")], 1.0: [_run(status="failed")]}
    assert _choose(points).chosen == {"lr": 0.1}
    with pytest.raises(RuntimeError, match="every point of its grid failed"):
        _choose({0.1: [_run(status="diverged")], 0.3: [_run(status="failed")]})


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


def _by_seed(**arms):
    return {arm: {seed: ({"status": "completed", **v} if isinstance(v, dict) else {"status": v})
                  for seed, v in enumerate(values)} for arm, values in arms.items()}


def test_verdict_rule_holds_fails_inconclusive():
    claim = Claim("a is lower than b", better="a", than="b", metric="val/loss")
    lower = [{"val/loss": 0.1}, {"val/loss": 0.2}, {"val/loss": 0.3}]
    higher = [{"val/loss": 0.5}, {"val/loss": 0.6}, {"val/loss": 0.7}]
    assert judge(claim, _by_seed(a=lower, b=higher)).verdict == "holds"
    assert judge(claim, _by_seed(a=higher, b=lower)).verdict == "fails"
    mixed = [{"val/loss": 0.1}, {"val/loss": 0.9}, {"val/loss": 0.3}]
    assert judge(claim, _by_seed(a=mixed, b=higher)).verdict == "inconclusive"  # means favour a, one seed does not
    assert judge(claim, _by_seed(a=lower, b=lower)).verdict == "inconclusive"  # ties
    assert judge(claim, _by_seed(a=[*lower[:2], "failed"], b=higher)).verdict == "inconclusive"  # missing
    up = Claim("a is higher", better="a", than="b", metric="val/loss", direction="higher")
    assert judge(up, _by_seed(a=higher, b=lower)).verdict == "holds"


def test_never_reaching_the_target_is_worse_than_reaching_it():
    claim = Claim("a is faster", better="a", than="b", metric="steps_to_target")
    reached = [{"steps_to_target": 100}, {"steps_to_target": 150}]
    never = [{"steps_to_target": None}, {"steps_to_target": None}]
    verdict = judge(claim, _by_seed(a=reached, b=never))
    assert verdict.verdict == "holds" and verdict.evidence["than"]["never_reached"] == 2
    assert judge(claim, _by_seed(a=never, b=never)).verdict == "inconclusive"
    json.dumps(verdict.as_dict(), allow_nan=False)  # evidence is plain JSON (no Infinity)


def test_a_claim_can_compare_two_metrics_of_one_arm():
    claim = Claim("κ in z below κ in p", better={"arm": "adam", "metric": "curvature/z/kappa"},
                  than={"arm": "adam", "metric": "curvature/p/kappa"})
    runs = _by_seed(adam=[{"curvature/z/kappa": 10.0, "curvature/p/kappa": 1e4}] * 3)
    assert judge(claim, runs).verdict == "holds"


@pytest.mark.parametrize("kwargs,key", [
    (dict(claim="", better="a", than="b", metric="m"), "claim"),
    (dict(claim="c", better="a", than="b"), "metric"),
    (dict(claim="c", better="a", than="b", metric="m", direction="down"), "direction"),
    (dict(claim="c", better={"arm": "a"}, than="b", metric="m"), "better"),
])
def test_a_bad_claim_names_its_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        Claim(**kwargs)
    assert str(err.value).startswith(f"{key}:")


TINY = ["hydra/sweeper=tuned", "hydra.mode=MULTIRUN", "steps=40", "eval_every=10", "target.value=0.3",
        "preconditioner=sgd", "hydra.sweeper.tuning_seeds=[0]", "hydra.sweeper.confirmation_seeds=[5,6,7]"]
ARMS = ("hydra.sweeper.arms={fast:{grid:{lr:[0.1,0.3,1.0]}},slow:{grid:{lr:[1e-6,2e-6,4e-6]}},"
        "same_as_fast:{grid:{lr:[0.1,0.3,1.0]}}}")
CLAIMS = ("hydra.sweeper.claims=[{claim:built to hold,metric:val/loss,better:fast,than:slow},"
          "{claim:built to fail,metric:val/loss,better:slow,than:fast},"
          "{claim:built to be inconclusive,metric:val/loss,better:fast,than:same_as_fast}]")


def test_a_tiny_tuned_sweep_selects_confirms_and_judges(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_in_process([*TINY, ARMS, CLAIMS, f"hydra.sweep.dir={sweep}"]) == 0
    selection = json.loads((sweep / "selection.json").read_text())
    assert selection["arms"]["slow"]["chosen"] == {"lr": 4e-6} and selection["arms"]["slow"]["at_edge"] == ["lr"]
    assert selection["arms"]["fast"]["grid"] == {"lr": [0.1, 0.3, 1.0]}
    assert selection["arms"]["fast"]["tuning_seeds"] == [0]
    assert selection["arms"]["fast"]["confirmation_seeds"] == [5, 6, 7]
    # the chosen point is the best of its grid by the rule, read back from the tuning runs
    tuning = [read_summary(sweep / str(i)) for i in range(9)]
    fast = {float(s["overrides"][-4].split("=")[1]): s for s in tuning if s["arm"] == "fast"}
    best = min(fast, key=lambda lr: (-(fast[lr]["steps_to_target"] is not None),
                                     fast[lr]["steps_to_target"] or math.inf, fast[lr]["val/loss"]))
    assert selection["arms"]["fast"]["chosen"] == {"lr": best}
    confirmation = [read_summary(sweep / str(i)) for i in range(9, 18)]
    assert {(s["stage"], s["arm"]) for s in confirmation} == {("confirmation", a) for a in ("fast", "slow",
                                                                                              "same_as_fast")}
    assert sorted({s["seed"] for s in confirmation}) == [5, 6, 7]
    verdicts = json.loads((sweep / "verdicts.json").read_text())
    assert [v["verdict"] for v in verdicts] == ["holds", "fails", "inconclusive"]
    assert all(set(v) == {"claim", "verdict", "rule", "evidence"} for v in verdicts)
    report = (sweep / "comparison.md").read_text()
    assert "**holds** — built to hold" in report and "⚠ edge of grid" in report
    assert (sweep / "lr_sensitivity.png").stat().st_size > 0 and (sweep / "confirmation.png").stat().st_size > 0


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
    assert tables["verdicts"]["data"][0][:2] == ["a is lower", "holds"]
    assert [row[0] for row in tables["selection"]["data"]] == ["a", "b"]
    assert len(list(runs[0].rglob("*.png"))) == 2
    config = (sweep / "0" / "config.yaml").read_text()
    assert "stage: tuning" in config and "arm: a" in config  # every run's W&B config carries its stage and arm


def test_a_claim_against_a_threshold_is_judged_on_every_seed():
    claim = Claim("bn's Hessian is singular", better={"arm": "bn", "metric": "curvature/p/null_dim"}, than=0,
                  direction="higher")
    assert judge(claim, _by_seed(bn=[{"curvature/p/null_dim": 4}] * 3)).verdict == "holds"
    assert judge(claim, _by_seed(bn=[{"curvature/p/null_dim": 0}] * 3)).verdict == "fails"
    assert judge(claim, _by_seed(bn=[{"curvature/p/null_dim": 4}, {"curvature/p/null_dim": 0}])).verdict == \
        "inconclusive"


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
    assert run_in_process([*TINY, arms, f"hydra.sweep.dir={tmp_path}/s"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "s" / "0").exists()  # not even the good arm ran


@pytest.mark.parametrize("extra,message", [
    (["hydra.sweeper.confirmation_seeds=[100]"],
     "hydra.sweeper.confirmation_seeds: expected a list of 3+ distinct values"),
    (["hydra.sweeper.confirmation_seeds=[100,100,100]"],
     "hydra.sweeper.confirmation_seeds: expected a list of 3+ distinct values"),
    (["hydra.sweeper.confirmation_seeds=[0,1,2]"], "hydra.sweeper.confirmation_seeds: expected seeds disjoint"),
    (["hydra.sweeper.tuning_seeds=[0,0]"], "hydra.sweeper.tuning_seeds: expected a list of 1+ distinct values"),
    (["hydra.sweeper.claims=[{claim:x,metric:val/acc,better:a,than:b}]"],
     "hydra.sweeper.claims[0].metric: 'val/acc' for arm a: a regression dataset records no accuracy"),
    (["hydra.sweeper.claims=[{claim:x,metric:curvature/z/kappa,better:a,than:b}]"],
     "hydra.sweeper.claims[0].metric: 'curvature/z/kappa' for arm a: curvature is not measured"),
    (["hydra.sweeper.arms={a:{grid:{lr:[0.5]}},b:{overrides:{batch_size:5000},grid:{lr:[0.5]}}}"],
     "hydra.sweeper.arms.b at {'lr': 0.5}: batch_size: expected at most the training-split size 2048"),
    (["hydra.sweeper.arms={a:{grid:{lr:[0.5]}},b:{overrides:{target.metric:val/acc},grid:{lr:[0.5]}}}"],
     "hydra.sweeper.arms.b at {'lr': 0.5}: target.metric: expected one of"),
])
def test_a_tuned_sweep_checks_seeds_claims_and_every_run_before_the_first_run(tmp_path, capsys, extra, message):
    arms = [] if extra[0].startswith("hydra.sweeper.arms") else ["hydra.sweeper.arms={a:{},b:{}}"]
    argv = [*TINY, "lr=0.5", *arms, *extra, f"hydra.sweep.dir={tmp_path}/s"]
    assert run_in_process(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "s" / "0").exists()
