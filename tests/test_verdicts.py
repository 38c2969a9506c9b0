"""The verdict rule on constructed evidence: each state, censored values, ties, Holm, identities."""
from __future__ import annotations

import json
import math

import pytest

from precond.errors import ConfigError
from precond.sweep.stats import holm, sign_test, signed_rank_test
from precond.sweep.verdicts import Claim, count_states, judge, judge_all

SEEDS = list(range(100, 110))


def _runs(**arms) -> dict:
    """``arm=[value per seed]`` → ``{arm: {seed: summary}}`` for the metric ``m`` (None: undefined, "failed")."""
    out = {}
    for arm, values in arms.items():
        out[arm] = {}
        for seed, v in zip(SEEDS, values):
            out[arm][seed] = {"status": v} if v in ("failed", "diverged") else {"status": "completed", "m": v,
                                                                                   "steps_to_target": v}
    return out


def _one(claim: Claim, runs: dict, invalid=None):
    return judge_all([claim], runs, SEEDS, invalid)[0]


LOWER = Claim("a is lower than b", better="a", than="b", metric="m", scale="difference", margin=0.05)


def test_a_clear_difference_holds_with_the_wilcoxon_p_and_its_effect():
    a = [0.10, 0.12, 0.11, 0.13, 0.10, 0.09, 0.12, 0.11, 0.10, 0.14]
    b = [x + 0.2 + 0.01 * i for i, x in enumerate(a)]
    v = _one(LOWER, _runs(a=a, b=b))
    d = [y - x for x, y in zip(a, b)]
    assert v.verdict == "holds" and v.effect["statistic"] == "Wilcoxon signed-rank"
    assert v.p_value == pytest.approx(2 * signed_rank_test(d)) and v.p_adjusted == v.p_value
    assert v.effect["estimate"] == pytest.approx(sorted(d)[4] / 2 + sorted(d)[5] / 2)
    assert (v.wins, v.losses, v.ties, v.n) == (10, 0, 0, 10)


def test_the_mirror_image_fails():
    a = [0.5 + 0.01 * i for i in range(10)]
    b = [0.1 + 0.01 * i for i in range(10)]
    assert _one(LOWER, _runs(a=a, b=b)).verdict == "fails"


def test_a_small_but_significant_effect_within_the_margin_is_not_holds():
    a = [0.100 + 0.001 * i for i in range(10)]
    b = [x + 0.01 for x in a]  # 0.01 better on every seed, margin 0.05
    v = _one(LOWER, _runs(a=a, b=b))
    assert v.p_adjusted < 0.05 and v.verdict == "equivalent"  # and its interval lies inside ±0.05


def test_no_difference_is_equivalent_when_the_interval_is_inside_the_margin_else_inconclusive():
    a = [0.3, 0.31, 0.29, 0.3, 0.32, 0.28, 0.3, 0.31, 0.29, 0.3]
    b = [0.31, 0.3, 0.3, 0.29, 0.31, 0.29, 0.31, 0.3, 0.3, 0.29]
    assert _one(LOWER, _runs(a=a, b=b)).verdict == "equivalent"
    wild = [0.3, 0.9, 0.1, 0.8, 0.2, 0.7, 0.1, 0.9, 0.2, 0.6]
    v = _one(LOWER, _runs(a=wild, b=b))
    assert v.verdict == "inconclusive" and v.reason.startswith("not significant")


def test_censored_pairs_count_by_sign_with_the_exact_sign_test():
    claim = Claim("a is faster", better="a", than="b", metric="steps_to_target")
    a = [100.0] * 10
    b = [None] * 8 + [300.0, 50.0]  # b never reaches on 8 seeds: +∞ steps
    runs = _runs(a=a, b=[400.0] * 10)
    for seed, v in zip(SEEDS, b):
        runs["b"][seed]["steps_to_target"] = v
    v = _one(claim, runs)
    assert v.effect["statistic"] == "sign test" and (v.wins, v.losses) == (9, 1)
    assert v.p_value == pytest.approx(2 * sign_test(9, 1))
    assert v.verdict == "holds" and v.effect["estimate"] == "inf"
    json.dumps(v.as_dict(), allow_nan=False)  # evidence is plain JSON (no Infinity)


def test_ties_are_dropped_from_the_test_but_kept_in_the_count():
    claim = Claim("a is faster", better="a", than="b", metric="steps_to_target")
    runs = _runs(a=[100.0] * 10, b=[100.0] * 6 + [400.0] * 4)
    v = _one(claim, runs)
    assert (v.wins, v.losses, v.ties) == (4, 0, 6)
    assert v.p_value == pytest.approx(2 * signed_rank_test([math.log(4)] * 4))


@pytest.mark.parametrize(("runs", "invalid", "reason"), [
    (_runs(a=[0.1] * 10, b=[0.5] * 10), {"b": "arm b: no grid point is eligible"}, "arm b never trained"),
    (_runs(a=["failed", "failed"] + [0.1] * 8, b=[0.5] * 10), None, "2 of 10 declared runs failed"),
    (_runs(a=[0.1] * 7, b=[0.5] * 10), None, "3 of 10 declared runs failed or are missing"),
    (_runs(a=[None, None] + [0.1] * 8, b=[0.5] * 10), None, "m is undefined on 2 of 10 seeds"),
])
def test_invalid_states_say_why(runs, invalid, reason):
    v = _one(LOWER, runs, invalid)
    assert v.verdict == "invalid" and v.reason.startswith(reason) and v.p_value is None


def test_one_failed_run_is_dropped_not_fatal():
    v = _one(LOWER, _runs(a=["failed"] + [0.1] * 9, b=[0.5] * 10))
    assert v.verdict == "holds" and v.n == 9


def test_an_identity_is_verified_on_every_seed_and_not_counted_as_support():
    claim = Claim("null space > 0", better={"arm": "bn", "metric": "m"}, than=0, direction="higher", identity=True)
    ok = _one(claim, _runs(bn=[17.0] * 10))
    assert ok.verdict == "identity" and "verified on all 10 seeds" in ok.reason
    broken = _one(claim, _runs(bn=[17.0] * 9 + [0.0]))
    assert broken.verdict == "fails"
    tol = Claim("equal", better="a", than="b", metric="m", identity=True, tolerance=1e-6)
    assert _one(tol, _runs(a=[1.0] * 10, b=[1.0 + 1e-9] * 10)).verdict == "identity"
    assert count_states([ok, broken]) == {"holds": 0, "fails": 1, "equivalent": 0, "inconclusive": 0,
                                          "invalid": 0, "identity": 1}


def test_holm_adjusts_over_the_experiments_empirical_claims_only():
    a = [0.1 + 0.001 * i for i in range(10)]
    strong = _runs(a=a, b=[x + 0.3 for x in a])
    claims = [LOWER, Claim("b lower", better="b", than="a", metric="m", scale="difference"),
              Claim("identity", better={"arm": "a", "metric": "m"}, than=0.0, direction="higher", identity=True)]
    verdicts = judge_all(claims, strong, SEEDS)
    assert [v.verdict for v in verdicts] == ["holds", "fails", "identity"]
    raw = [v.p_value for v in verdicts[:2]]
    assert [v.p_adjusted for v in verdicts[:2]] == pytest.approx(holm(raw)) and verdicts[2].p_adjusted is None


def test_only_the_declared_seeds_are_judged():
    runs = _runs(a=[0.1] * 10, b=[0.5] * 10)
    runs["a"][999] = {"status": "completed", "m": 9.0}  # a stray run of an undeclared seed
    v = judge(LOWER, runs, SEEDS)
    assert v.evidence["seeds"] == SEEDS and 9.0 not in v.evidence["better"]["values"]


def test_default_margins_follow_the_scale():
    assert Claim("c", better="a", than="b", metric="steps_to_target").margin == 1.25
    assert Claim("c", better="a", than="b", metric="curvature/z/kappa").scale == "ratio"
    assert Claim("c", better="a", than="b", metric="val/acc").margin == 0.005
    with pytest.raises(ConfigError, match="^margin"):
        Claim("c", better="a", than="b", metric="steps_to_target", margin=0.5)


def test_pairs_in_which_neither_side_reached_the_target_never_make_an_equivalence():
    """Two arms that both never reach the target tie on every seed; that is not "the advantage is gone"."""
    claim = Claim("a is faster", better="a", than="b", metric="steps_to_target")
    runs = _runs(a=[1.0] * 10, b=[1.0] * 10)
    for arm in ("a", "b"):
        for seed in SEEDS:
            runs[arm][seed]["steps_to_target"] = None
    v = _one(claim, runs)
    assert (v.wins, v.losses, v.ties) == (0, 0, 10) and v.effect["both_unreached"] == 10
    assert v.verdict == "inconclusive" and "neither side reached the target on 10 of 10" in v.reason
    reached = _runs(a=[200.0] * 10, b=[201.0] * 10)  # measured ties within the margin: equivalent
    assert _one(claim, reached).verdict == "equivalent"
