"""The verdict rule on constructed evidence: each state, the paired tests and intervals, the margin, censored
bounds, non-inferiority, role families, floors and identities."""
from __future__ import annotations

import json
import math

import pytest
from scipy import stats as scipy_stats

from precond.errors import ConfigError
from precond.sweep.stats import holm, median_interval, sign_test, walsh_interval
from precond.sweep.verdicts import (
    Claim,
    check_families,
    count_states,
    estimate_text,
    family_bounds,
    judge,
    judge_all,
    seeds_needed,
)

SEEDS = list(range(100, 110))


def _runs(**arms) -> dict:
    """``arm=[value per seed]`` → ``{arm: {seed: summary}}`` for the metric ``m`` (None: undefined, "failed");
    every run has a budget of 1000 steps."""
    out = {}
    for arm, values in arms.items():
        out[arm] = {}
        for seed, v in zip(SEEDS, values):
            out[arm][seed] = {"status": v} if v in ("failed", "diverged") else {
                "status": "completed", "m": v, "steps_to_target": v, "steps": 1000}
    return out


def _one(claim: Claim, runs: dict, invalid=None):
    return judge_all([claim], runs, SEEDS, invalid)[0]


LOWER = Claim("a is lower than b", better="a", than="b", metric="m", scale="difference", margin=0.05)


def test_a_clear_difference_holds_on_the_sign_test_with_the_median_and_its_interval():
    a = [0.10, 0.12, 0.11, 0.13, 0.10, 0.09, 0.12, 0.11, 0.10, 0.14]
    b = [x + 0.2 + 0.01 * i for i, x in enumerate(a)]
    v = _one(LOWER, _runs(a=a, b=b))
    d = [y - x for x, y in zip(a, b)]
    median, (low, high), _ = median_interval(d)
    assert v.verdict == "holds" and v.effect["statistic"] == "sign test" and v.effect["estimator"] == "median"
    assert v.effect["estimate"] == [pytest.approx(median)] * 2 and v.effect["ci"] == [pytest.approx(low),
                                                                                       pytest.approx(high)]
    # the test is of H₀: θ ≤ margin, so it counts the pairs beyond the margin, not beyond 0
    assert v.p_value == pytest.approx(2 * sign_test(sum(x > 0.05 for x in d), sum(x < 0.05 for x in d)))
    assert (v.wins, v.losses, v.ties, v.n) == (10, 0, 0, 10)


def test_signed_rank_claims_pair_wilcoxon_with_hodges_lehmann_and_the_walsh_interval():
    claim = Claim("a is lower", better="a", than="b", metric="m", scale="difference", margin=0.05, test="signed_rank")
    a = [0.1] * 10
    b = [0.1 + x for x in (0.31, 0.22, 0.45, 0.18, 0.27, 0.39, 0.24, 0.33, 0.2, 0.29)]
    v = _one(claim, _runs(a=a, b=b))
    d = [y - x for x, y in zip(a, b)]
    estimate, (low, high), _ = walsh_interval(d)
    assert v.effect["estimator"] == "Hodges–Lehmann" and v.effect["estimate"][0] == pytest.approx(estimate)
    assert v.effect["ci"] == [pytest.approx(low), pytest.approx(high)] and v.verdict == "holds"
    expected = scipy_stats.wilcoxon([x - 0.05 for x in d], alternative="greater", method="exact").pvalue
    assert v.p_value == pytest.approx(2 * expected)


def test_a_significant_point_estimate_beyond_the_margin_does_not_hold_when_the_interval_straddles_it():
    """The old rule's failure: the median beyond the margin while the interval reaches across it."""
    claim = Claim("a is faster", better="a", than="b", metric="steps_to_target")
    a = [100.0] * 10
    b = [100.0 * r for r in (3.3, 3.3, 3.4, 3.3, 3.4, 3.3, 3.3, 0.7, 0.7, 0.69)]  # 7 seeds ×3.3, 3 seeds ×0.7
    v = _one(claim, _runs(a=a, b=b))
    assert math.exp(v.effect["estimate"][0]) > 1.25 and math.exp(v.effect["ci"][0]) < 1.25
    assert v.verdict == "inconclusive" and v.p_value == pytest.approx(2 * sign_test(7, 3))


def test_the_mirror_image_fails():
    a = [0.5 + 0.01 * i for i in range(10)]
    b = [0.1 + 0.01 * i for i in range(10)]
    v = _one(LOWER, _runs(a=a, b=b))
    assert v.verdict == "fails" and v.effect["ci"][1] < -0.05


def test_a_small_consistent_effect_within_the_margin_is_equivalent_not_holds():
    a = [0.100 + 0.001 * i for i in range(10)]
    b = [x + 0.01 for x in a]  # 0.01 better on every seed, margin 0.05: no seed clears the margin
    v = _one(LOWER, _runs(a=a, b=b))
    assert v.verdict == "equivalent" and v.p_value == pytest.approx(1.0)


def test_no_difference_is_equivalent_when_the_interval_is_inside_the_margin_else_inconclusive():
    a = [0.3, 0.31, 0.29, 0.3, 0.32, 0.28, 0.3, 0.31, 0.29, 0.3]
    b = [0.31, 0.3, 0.3, 0.29, 0.31, 0.29, 0.31, 0.3, 0.3, 0.29]
    assert _one(LOWER, _runs(a=a, b=b)).verdict == "equivalent"
    wild = [0.3, 0.9, 0.1, 0.8, 0.2, 0.7, 0.1, 0.9, 0.2, 0.6]
    v = _one(LOWER, _runs(a=wild, b=b))
    assert v.verdict == "inconclusive" and v.reason.startswith("not significant")


def test_a_censored_pair_is_a_bound_set_by_the_budget_and_decides_on_it():
    """b never reaches the target in its 1000 steps: the effect is at least log(1000/a), never ∞."""
    claim = Claim("a is faster", better="a", than="b", metric="steps_to_target")
    runs = _runs(a=[850.0] * 10, b=[None] * 10)
    for seed in SEEDS:
        runs["b"][seed]["steps_to_target"] = None
    v = _one(claim, runs)
    bound = math.log(1000 / 850)  # ×1.18 < the ×1.25 margin: not enough to hold, however many seeds
    assert v.effect["estimate"] == [pytest.approx(bound), "inf"] and v.effect["ci"][0] == pytest.approx(bound)
    assert v.verdict == "inconclusive" and v.effect["censored"] == 10
    assert estimate_text("ratio", v.effect["estimate"]) == "≥ ×1.18"
    fast = _runs(a=[100.0] * 10, b=[None] * 10)
    for seed in SEEDS:
        fast["b"][seed]["steps_to_target"] = None
    w = _one(claim, fast)
    assert w.verdict == "holds" and w.effect["ci"][0] == pytest.approx(math.log(10))
    json.dumps(w.as_dict(), allow_nan=False)  # evidence is plain JSON (no Infinity)


def test_a_censored_pair_against_the_claim_counts_against_holds_but_bounds_fails():
    claim = Claim("a is faster", better="a", than="b", metric="steps_to_target")
    runs = _runs(a=[100.0] * 10, b=[400.0] * 10)
    runs["a"][SEEDS[0]]["steps_to_target"] = None  # a never reached on one seed: θ ≤ log(400/1000) there
    v = _one(claim, runs)
    assert (v.wins, v.losses) == (9, 1) and v.p_value == pytest.approx(2 * sign_test(9, 1))
    assert v.verdict == "holds" and v.effect["ci"][0] == pytest.approx(math.log(4))  # the 2nd order statistic
    assert v.effect["censored"] == 1 and v.evidence["better"]["values"][0] == {"not_reached_within": 1000.0}
    three = judge_all([claim] * 3, runs, SEEDS)  # in a family of three, 9 of 10 is not enough: Holm 0.064
    assert three[0].p_adjusted == pytest.approx(3 * 2 * sign_test(9, 1)) and three[0].verdict == "inconclusive"


def test_noninferiority_holds_when_the_interval_clears_minus_the_margin():
    claim = Claim("a is at least as fast", better="a", than="b", metric="steps_to_target", kind="noninferiority")
    a = [100.0 + i for i in range(10)]
    b = [x * 0.95 for x in a]  # a is 5 % slower on every seed, within the ×1.25 margin
    v = _one(claim, _runs(a=a, b=b))
    assert v.verdict == "noninferior" and v.effect["ci"][0] > -math.log(1.25)
    superiority = Claim("a is faster", better="a", than="b", metric="steps_to_target")
    assert _one(superiority, _runs(a=a, b=b)).verdict == "equivalent"
    slow = _one(claim, _runs(a=[200.0] * 10, b=[100.0] * 10))
    assert slow.verdict == "fails" and slow.effect["ci"][1] < -math.log(1.25)


def test_holm_runs_within_each_role_and_identities_are_in_none():
    a = [0.1 + 0.001 * i for i in range(10)]
    strong = _runs(a=a, b=[x + 0.3 for x in a])
    claims = [LOWER, Claim("b lower", better="b", than="a", metric="m", scale="difference"),
              Claim("a lower, exploratory", better="a", than="b", metric="m", scale="difference", role="exploratory"),
              Claim("identity", better={"arm": "a", "metric": "m"}, than=0.0, direction="higher", identity=True)]
    verdicts = judge_all(claims, strong, SEEDS)
    assert [v.verdict for v in verdicts] == ["holds", "fails", "holds", "identity"]
    raw = [v.p_value for v in verdicts[:2]]
    assert [v.p_adjusted for v in verdicts[:2]] == pytest.approx(holm(raw))
    assert verdicts[2].p_adjusted == verdicts[2].p_value and verdicts[3].p_adjusted is None
    assert verdicts[2].effect["family"] == "exploratory (1)" and verdicts[0].effect["family"] == "primary (2)"


def test_a_family_that_cannot_reach_significance_is_refused_with_the_seeds_it_needs():
    claims = [Claim(f"c{i}", better="a", than="b", metric="m") for i in range(15)]
    assert family_bounds(claims, 10, 2)["primary"] == (15, pytest.approx(15 * 2 / 1024))
    check_families(claims, 10, 2)  # 15 × 2⁻⁹ = 0.029: attainable (only with every seed)
    with pytest.raises(ConfigError, match=r"^confirmation_seeds: .*30 primary claims.*got 10 — use at least 11"):
        check_families(claims + [Claim("c", better="a", than="b", metric="m")] * 15, 10, 2)
    assert seeds_needed(30) == 11 and 30 * 2 * 2.0**-11 < 0.05 <= 30 * 2 * 2.0**-10
    tuning = [Claim("g", better="a", than="b", metric="grid/target_fraction", stage="tuning")]
    with pytest.raises(ConfigError, match="^tuning_seeds"):
        check_families(tuning, 10, 4)  # 2 × 2⁻⁴ = 0.125


@pytest.mark.parametrize(("key", "value"), [("role", "headline"), ("kind", "equivalence"), ("test", "t"),
                                            ("floor", -1)])
def test_bad_claim_keys_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        Claim("c", better="a", than="b", metric="m", **{key: value})


def test_a_comparison_at_the_measurement_floor_is_invalid():
    claim = Claim("a lowers κ⁺", better="a", than="b", metric="m", scale="ratio", floor=5e6)
    v = _one(claim, _runs(a=[5e6, 6e6] + [10.0] * 8, b=[1e7] * 10))
    assert v.verdict == "invalid" and v.reason.startswith("floor")
    ok = _one(claim, _runs(a=[10.0] * 10, b=[1e7] + [1e3] * 9))  # one seed at the floor is tolerated
    assert ok.verdict != "invalid"


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
    assert count_states([ok, broken]) == {"holds": 0, "noninferior": 0, "fails": 1, "equivalent": 0,
                                          "inconclusive": 0, "invalid": 0, "identity": 1}


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
    assert v.verdict == "inconclusive"
    reached = _runs(a=[200.0] * 10, b=[201.0] * 10)  # measured ties within the margin: equivalent
    assert _one(claim, reached).verdict == "equivalent"


@pytest.mark.parametrize("seed", range(6))
def test_every_decisive_verdict_has_its_interval_beyond_the_boundary(seed):
    """The consistency the rule promises, on random evidence of both tests and kinds."""
    import random

    rng = random.Random(seed)
    for test in ("sign", "signed_rank"):
        for kind in ("superiority", "noninferiority"):
            claim = Claim("c", better="a", than="b", metric="steps_to_target", test=test, kind=kind)
            shift = rng.choice([0.0, 0.3, 0.8, -0.5])
            a = [100.0] * 10
            b = [100.0 * math.exp(shift + rng.gauss(0, 0.3)) for _ in range(10)]
            v = _one(claim, _runs(a=a, b=b))
            low, high = v.effect["ci"]
            if v.verdict in ("holds", "noninferior"):
                assert low > claim.boundaries[0]
            if v.verdict == "fails":
                assert high < claim.boundaries[1]
