"""Staged confirmation (seeds until the answer is clear) and data draws: the rule on constructed runs, and a
tiny tuned sweep in which only the open claim's arms get the second look's seeds."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from precond.errors import ConfigError
from precond.sweep.stats import holm, sign_test
from precond.sweep.tuning import TuningSpec, data_draw
from precond.sweep.verdicts import Claim, Verdict, arms_to_extend, judge_staged, promising
from tests.conftest import run_in_process

SEEDS = list(range(100, 120))


def _runs(**arms) -> dict:
    return {arm: {s: {"status": "completed", "m": v, "steps": 1000} for s, v in zip(SEEDS, values)}
            for arm, values in arms.items()}


CLEAR = Claim("a is lower than b", better="a", than="b", metric="m", scale="difference", margin=0.05)
CLOSE = Claim("c is lower than d", better="c", than="d", metric="m", scale="difference", margin=0.05)


def test_a_claim_decided_at_the_first_look_keeps_it_and_an_open_one_gets_the_second():
    a, b = [0.1] * 20, [0.5] * 20
    # c beats d beyond the margin on 8 of the first 10 seeds and on all 10 later ones
    c = [0.1] * 20
    d = [0.5] * 8 + [0.1] * 2 + [0.5] * 10
    runs = _runs(a=a, b=b, c=c, d=d)
    first, second = judge_staged([CLEAR, CLOSE], runs, SEEDS, stages=[10, 20])
    assert first.verdict == "holds" and first.effect["look"] == [1, 2, 10] and first.n == 10
    # look 1: 8 of 10 gives 2·sign_test(8, 2) = 0.11: open; look 2: 18 of 20, Holm over the family of 2 (the
    # claim decided at look 1 counts with p = 1), × 2 looks
    assert second.verdict == "holds" and second.effect["look"] == [2, 2, 20] and second.n == 20
    assert second.p_adjusted == pytest.approx(min(1, 2 * holm([2 * sign_test(18, 2), 1.0])[0]))
    assert "decided at look 2 of 2 on 20 seeds" in second.reason
    assert arms_to_extend([CLEAR, CLOSE], runs, SEEDS, [10, 20], look=0) == ["c", "d"]


def test_an_open_claim_whose_arms_lack_the_next_looks_runs_is_settled_where_it_stands():
    runs = _runs(c=[0.1] * 20, d=[0.5] * 8 + [0.1] * 2 + [0.5] * 10)
    for arm in ("c", "d"):
        for seed in SEEDS[10:]:
            del runs[arm][seed]
    (v,) = judge_staged([CLOSE], runs, SEEDS, stages=[10, 20])
    assert v.verdict == "inconclusive" and v.effect["look"] == [1, 2, 10]


def test_each_look_spends_alpha_over_the_number_of_looks_and_its_interval_is_wider():
    runs = _runs(a=[0.1] * 20, b=[0.5 - 0.01 * i for i in range(20)])
    (one,) = judge_staged([CLEAR], runs, SEEDS[:10], stages=[10])
    (staged,) = judge_staged([CLEAR], runs, SEEDS, stages=[10, 20])
    assert staged.p_adjusted == pytest.approx(2 * one.p_adjusted)
    assert one.effect["coverage"] >= 0.95 and staged.effect["coverage"] >= 0.975  # 1 − α/K
    (twenty,) = judge_staged([CLEAR], runs, SEEDS, stages=[20])
    (late,) = judge_staged([CLEAR], _runs(a=[0.1] * 20, b=[0.5] * 8 + [0.1] * 2 + [0.5] * 10), SEEDS, stages=[10, 20])
    assert late.effect["look"] == [2, 2, 20] and late.effect["coverage"] >= 0.975 > twenty.effect["coverage"]


@pytest.mark.parametrize(("stages", "message"), [
    ([10, 12], "a last stage equal to the number of confirmation_seeds (20)"),
    ([10, 10, 20], "strictly increasing"),
    ([5, 10, 15, 18, 20], "at most 4"),
    ([2, 20], "an integer >= 3"),
    ([10, 30], "list 30 confirmation seeds"),
])
def test_a_bad_stage_schedule_is_refused_naming_the_key(stages, message):
    with pytest.raises(ConfigError, match="^stages: ") as err:
        TuningSpec(arms={"a": {}}, confirmation_seeds=SEEDS, stages=stages)
    assert message in str(err.value)


def test_data_draws_cycle_the_data_seed_over_the_confirmation_seeds():
    spec = TuningSpec(arms={"a": {}}, confirmation_seeds=SEEDS, data_draws=3)
    assert [data_draw(spec, i, 7)["dataset.data_seed"] for i in range(5)] == [7, 8, 9, 7, 8]
    assert data_draw(TuningSpec(arms={"a": {}}), 4, 0) == {}
    with pytest.raises(ConfigError, match=r"^data_draws: expected an integer in \[1, 10\]"):
        TuningSpec(arms={"a": {}}, data_draws=11)


TINY = ["hydra/sweeper=tuned", "hydra.mode=MULTIRUN", "steps=40", "eval_every=10", "target.value=0.55",
        "preconditioner=sgd", "hydra.sweeper.tuning_seeds=[0,1]",
        "hydra.sweeper.confirmation_seeds=[5,6,7,8,9,10,11,12,13,14]",
        "hydra.sweeper.stages=[7,10]", "hydra.sweeper.data_draws=2",
        "hydra.sweeper.arms={fast:{grid:{lr:[0.1,0.3]}},slow:{grid:{lr:[1e-6,2e-6]}},twin:{grid:{lr:[0.1,0.3]}}}",
        "hydra.sweeper.claims=[{claim:fast beats slow,metric:val/loss,better:fast,than:slow},"
        "{claim:fast beats its twin,metric:val/loss,better:fast,than:twin,role:control}]"]


def test_a_tie_is_futile_so_a_staged_sweep_spends_no_second_look_on_it(tmp_path):
    """fast against its identical twin ties on every seed: its estimate (0) does not clear the margin (0), so the
    sweep stops at look 1 for every arm, and says why."""
    sweep = tmp_path / "sweep"
    assert run_in_process([*TINY, f"hydra.sweep.dir={sweep}"]) == 0
    seeds = {arm: sorted(int(p.parent.name[4:]) for p in (sweep / "confirmation" / arm).rglob("summary.json"))
             for arm in ("fast", "slow", "twin")}
    assert seeds == {arm: list(range(5, 12)) for arm in ("fast", "slow", "twin")}
    tie = json.loads((sweep / "verdicts.json").read_text())[1]
    assert tie["verdict"] == "inconclusive" and tie["effect"]["look"] == [1, 2, 7] and tie["effect"]["futile"]


def test_a_staged_sweep_runs_the_second_look_only_for_the_open_claims_arms_and_rejudges_from_evidence(
        tmp_path, monkeypatch):
    """fast beats slow at look 1; fast against its identical twin ties on every seed (inconclusive). With the
    futility stop switched off (the tie is futile: the test above), the open claim's arms, fast and twin, and
    only they, get seeds 12–14. The report rebuilt from evidence.json.gz alone, with the runs deleted, is the
    same."""
    from precond.sweep import verdicts as rule
    from precond.sweep.tuned_report import rejudge_tuned_report

    monkeypatch.setattr(rule, "promising", lambda claim, verdict: True)
    sweep = tmp_path / "sweep"
    assert run_in_process([*TINY, f"hydra.sweep.dir={sweep}"]) == 0
    seeds = {arm: sorted(int(p.parent.name[4:]) for p in (sweep / "confirmation" / arm).rglob("summary.json"))
             for arm in ("fast", "slow", "twin")}
    assert seeds == {"fast": list(range(5, 15)), "slow": list(range(5, 12)), "twin": list(range(5, 15))}
    # the data draw alternates with the seed's place in the list, and the run's dir names it
    draws = {p.parent.parent.name for p in (sweep / "confirmation" / "slow").rglob("summary.json")}
    assert draws == {"lr=2e-06,dataset.data_seed=0", "lr=2e-06,dataset.data_seed=1"}
    verdicts = json.loads((sweep / "verdicts.json").read_text())
    assert [v["verdict"] for v in verdicts] == ["holds", "inconclusive"]
    assert verdicts[0]["effect"]["look"] == [1, 2, 7] and verdicts[1]["effect"]["look"] == [2, 2, 10]
    assert json.loads((sweep / "selection.json").read_text())["stages"] == [7, 10]

    copy = tmp_path / "copy" / "sweep"
    copy.mkdir(parents=True)
    for name in ("selection.json", "evidence.json.gz"):
        shutil.copy(sweep / name, copy / name)
    rejudge_tuned_report(copy)
    assert (copy / "verdicts.json").read_text() == (sweep / "verdicts.json").read_text()
    assert (copy / "comparison.md").read_text() == (sweep / "comparison.md").read_text()
    assert (copy / "confirmation.png").stat().st_size > 0
    # new claims given at re-judging replace the stored ones (the judging inputs), nothing is rerun
    claims = json.loads((copy / "selection.json").read_text())["claims"][:1]
    assert [v.verdict for v in rejudge_tuned_report(copy, claims)] == ["holds"]
    assert len(json.loads((copy / "verdicts.json").read_text())) == 1
    # a set of pages that states the rules once: the report links to them instead of repeating them
    from precond.sweep.tuning import SELECTION_RULE
    from precond.sweep.verdicts import RULE

    own = (sweep / "comparison.md").read_text()
    assert RULE in own and SELECTION_RULE in own  # a sweep's own report stands alone
    rejudge_tuned_report(copy, claims, rules_at="../../results.md")
    linked = (copy / "comparison.md").read_text()
    assert RULE not in linked and SELECTION_RULE not in linked
    assert "[the verdict rule](../../results.md#the-verdict-rule)" in linked
    assert "[the selection rule](../../results.md#the-selection-rule)" in linked


FINAL_ARGS = ["hydra/sweeper=tuned", "hydra.mode=MULTIRUN", "steps=40", "eval_every=10", "target.value=0.45",
              "preconditioner=sgd", "hydra.sweeper.tuning_seeds=[0,1,2,3,4]",
              "hydra.sweeper.confirmation_seeds=[5,6,7,8,9,10]",
              "hydra.sweeper.arms={a:{grid:{lr:[0.03,0.1,0.3,1.0]}},b:{grid:{lr:[1e-6,2e-6]}}}",
              "hydra.sweeper.claims=[{claim:a ends lower,metric:val/loss,better:a,than:b,selection:final},"
              "{claim:a is faster,metric:steps_to_target,better:a,than:b,role:exploratory}]"]


def test_a_claim_on_a_final_value_reads_each_arm_at_its_best_median_final_value(tmp_path):
    import statistics

    from tests.conftest import read_summary

    sweep = tmp_path / "sweep"
    assert run_in_process([*FINAL_ARGS, f"hydra.sweep.dir={sweep}"]) == 0
    selection = json.loads((sweep / "selection.json").read_text())
    finals = {lr: statistics.median(read_summary(sweep / "tuning" / "a" / f"lr={lr}" / f"seed{s}")["val/loss"]
                                    for s in range(5)) for lr in (0.03, 0.1, 0.3, 1.0)}
    assert selection["arms"]["a"]["chosen_final"] == {"lr": min(finals, key=finals.get)}
    assert "chosen_final" not in selection["arms"]["b"] or selection["arms"]["b"]["chosen_final"] is not None
    verdict = json.loads((sweep / "verdicts.json").read_text())[0]
    point = selection["arms"]["a"]["chosen_final"]["lr"]
    on_disk = [read_summary(sweep / "confirmation" / "a" / f"lr={point}" / f"seed{s}")["val/loss"]
               for s in range(5, 11)]
    assert verdict["evidence"]["better"]["values"] == on_disk
    assert "a@final" in (sweep / "comparison.md").read_text()


@pytest.mark.parametrize(("extra", "message"), [
    (["hydra.sweeper.tuning_seeds=[0,1]"], "hydra.sweeper.claims[0].selection: expected speed, or final with at "
                                           "least 5 tuning seeds"),
    (["hydra.sweeper.claims=[{claim:c,stage:tuning,metric:grid/near_optimal_fraction,better:a,than:b,"
      "selection:final}]"], "hydra.sweeper.claims[0].selection: expected speed for a claim with stage: tuning"),
    (["hydra.sweeper.claims=[{claim:c,metric:val/loss,better:a,than:b,selection:best}]"],
     "hydra.sweeper.claims[0].selection: expected one of ['speed', 'final']"),
])
def test_a_selection_rule_a_claim_cannot_use_is_refused_before_any_run(tmp_path, capsys, extra, message):
    assert run_in_process([*FINAL_ARGS, *extra, f"hydra.sweep.dir={tmp_path}/s"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not list((tmp_path / "s").rglob("summary.json"))


def test_an_exploratory_claim_is_staged_like_a_primary_one():
    """Every role gets the same looks: on a fresh draw an open exploratory claim has the same chance to decide."""
    exploratory = Claim("c is lower than d", better="c", than="d", metric="m", scale="difference", margin=0.05,
                        role="exploratory")
    runs = _runs(c=[0.1] * 20, d=[0.5] * 8 + [0.1] * 2 + [0.5] * 10)
    (v,) = judge_staged([exploratory], runs, SEEDS, stages=[10, 20])
    assert v.verdict == "holds" and v.effect["look"] == [2, 2, 20]
    assert arms_to_extend([exploratory], runs, SEEDS, [10, 20], look=0) == ["c", "d"]


def test_an_open_claim_whose_estimate_lies_inside_the_margin_stops_for_futility():
    """Look 1: c beats d by 0.02 (median; interval −0.1 … +0.2) against a margin of 0.05 — more seeds would
    narrow an interval around an estimate that does not clear the margin, so none are spent, even though later
    seeds would decide it."""
    runs = _runs(c=[0.1] * 20, d=[0.12] * 6 + [0.0] * 2 + [0.3] * 2 + [0.5] * 10)
    (v,) = judge_staged([CLOSE], runs, SEEDS, stages=[10, 20])
    assert v.verdict == "inconclusive" and v.effect["look"] == [1, 2, 10] and v.effect["futile"]
    assert "stopped for futility" in v.reason
    assert arms_to_extend([CLOSE], runs, SEEDS, [10, 20], look=0) == []


def test_an_open_claim_whose_estimate_lies_beyond_minus_the_margin_goes_on_towards_fails():
    """The futility rule is symmetric: an estimate against the claim, beyond −margin, is worth more seeds."""
    runs = _runs(c=[0.5] * 8 + [0.1] * 2 + [0.5] * 10, d=[0.1] * 20)
    (v,) = judge_staged([CLOSE], runs, SEEDS, stages=[10, 20])
    assert v.verdict == "fails" and v.effect["look"] == [2, 2, 20] and "futile" not in v.effect
    assert arms_to_extend([CLOSE], runs, SEEDS, [10, 20], look=0) == ["c", "d"]


def test_a_censored_estimate_counts_at_its_favourable_end_for_futility():
    """A side that never reached its target leaves the estimate a bound: [×1.1, ∞) may still clear ×1.25."""
    claim = Claim("c is faster than d", better="c", than="d", metric="steps_to_target", margin=1.25)
    open_bound = Verdict(claim.claim, "inconclusive", "", {}, effect={"estimate": [math.log(1.1), "inf"]})
    closed = Verdict(claim.claim, "inconclusive", "", {}, effect={"estimate": [math.log(1.1), math.log(1.1)]})
    assert promising(claim, open_bound) and not promising(claim, closed)
