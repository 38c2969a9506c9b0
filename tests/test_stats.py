"""The verdict statistics against scipy.stats and closed forms."""
from __future__ import annotations

import math
import random

import pytest
from scipy import stats as scipy_stats

from precond.sweep.stats import holm, median_interval, sign_test, signed_rank_test


@pytest.mark.parametrize(("wins", "losses"), [(10, 0), (9, 1), (8, 2), (5, 5), (0, 7), (3, 0), (12, 3)])
def test_sign_test_is_scipys_exact_binomial_test(wins, losses):
    expected = scipy_stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
    assert sign_test(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_sign_test_closed_forms():
    assert sign_test(10, 0) == 2**-10  # every one of ten seeds: 1/1024
    assert sign_test(3, 0) == 0.125  # the old "3 seeds, all must win" rule: a 12.5 % false-holds rate
    assert sign_test(0, 0) == 1.0


@pytest.mark.parametrize("seed", range(8))
def test_signed_rank_test_is_scipys_exact_wilcoxon(seed):
    rng = random.Random(seed)
    n = rng.randint(4, 12)
    d = [round(rng.gauss(0.4, 1.0), 6) for _ in range(n)]
    expected = scipy_stats.wilcoxon(d, alternative="greater", method="exact").pvalue
    assert signed_rank_test(d) == pytest.approx(expected, rel=1e-9)


def test_signed_rank_test_with_tied_magnitudes_enumerates_the_mid_ranks():
    d = [1.0, 1.0, -1.0, 2.0, 3.0, -3.0, 4.0]  # ties: scipy's exact mode does not take them; count by hand
    ranks = {1.0: 2.0, 2.0: 4.0, 3.0: 5.5, 4.0: 7.0}
    r = [ranks[abs(x)] for x in d]
    observed = sum(ri for ri, x in zip(r, d) if x > 0)
    from itertools import product

    count = sum(1 for s in product((0, 1), repeat=len(d)) if sum(ri for ri, si in zip(r, s) if si) >= observed)
    assert signed_rank_test(d) == pytest.approx(count / 2 ** len(d))


def test_signed_rank_test_normal_approximation_beyond_the_exact_range():
    rng = random.Random(3)
    d = [rng.gauss(0.3, 1.0) for _ in range(40)]
    expected = scipy_stats.wilcoxon(d, alternative="greater", method="approx", correction=True).pvalue
    assert signed_rank_test(d) == pytest.approx(expected, rel=1e-6)


def test_median_interval_matches_order_statistics_and_binomial_coverage():
    x = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 10.0]
    median, (low, high), coverage = median_interval(x)
    assert median == 5.5 and (low, high) == (2.0, 9.0)  # n = 10: the 2nd and 9th order statistics
    assert coverage == pytest.approx(1 - 2 * scipy_stats.binom.cdf(1, 10, 0.5))
    assert coverage >= 0.95 and 1 - 2 * scipy_stats.binom.cdf(2, 10, 0.5) < 0.95  # the narrowest such pair


def test_median_interval_keeps_censored_values_and_is_unbounded_when_n_is_too_small():
    median, (low, high), _ = median_interval([1.0, 2.0, math.inf, math.inf, math.inf, math.inf, 3.0, 4.0, 5.0, 6.0])
    assert median == 5.5 and low == 2.0 and high == math.inf
    assert median_interval([1.0, 2.0, 3.0])[1] == (-math.inf, math.inf)  # 3 seeds cannot bound a 95 % interval


def test_median_interval_coverage_by_simulation():
    rng = random.Random(0)
    covered = 0
    for _ in range(2000):
        _, (low, high), _ = median_interval([rng.expovariate(1.0) for _ in range(10)])
        covered += low <= math.log(2) <= high
    assert covered / 2000 >= 0.96  # nominal 0.979 for n = 10


def test_holm_against_the_textbook_example():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max 0.02, 0.03, 0.06, 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == [] and holm([0.7]) == [0.7] and holm([0.6, 0.6]) == [1.0, 1.0]


def test_loglog_slope_matches_scipy_linregress_and_its_interval_covers_the_true_slope():
    import random as _random

    import scipy.stats

    from precond.sweep.stats import loglog_slope
    rng = _random.Random(5)
    x = [10 ** (i / 4) for i in range(24)]
    y = [3.0 * v**0.5 * math.exp(rng.gauss(0, 0.2)) for v in x]
    fit = loglog_slope(x, y, reps=1000)
    ref = scipy.stats.linregress([math.log(v) for v in x], [math.log(v) for v in y])
    assert fit.slope == pytest.approx(ref.slope, rel=1e-12) and fit.intercept == pytest.approx(ref.intercept, rel=1e-9)
    # the bootstrap interval is close to the t interval of ordinary least squares
    t = scipy.stats.t.ppf(0.975, len(x) - 2)
    assert fit.ci[0] == pytest.approx(ref.slope - t * ref.stderr, abs=0.03)
    assert fit.ci[1] == pytest.approx(ref.slope + t * ref.stderr, abs=0.03)
    assert fit.judge(0.5, 0.1) == "holds" and fit.judge(1.0, 0.1) == "fails" and fit.judge(0.4, 0.05) != "holds"


def test_loglog_slope_refuses_too_few_or_nonpositive_points():
    from precond.sweep.stats import loglog_slope
    with pytest.raises(ValueError, match="at least 3"):
        loglog_slope([1, 2], [1, 2])
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([1, 2, 0], [1, 2, 3])


@pytest.mark.parametrize("seed", range(6))
def test_walsh_interval_is_the_set_of_centres_scipys_exact_wilcoxon_does_not_reject(seed):
    """The Hodges–Lehmann interval inverts the signed-rank test: just inside each end scipy's exact one-sided test
    does not reject at α/2, just outside it does."""
    from precond.sweep.stats import walsh_interval
    rng = random.Random(seed)
    n = rng.randint(7, 14)
    d = [rng.gauss(0.5, 1.0) for _ in range(n)]
    estimate, (low, high), coverage = walsh_interval(d)
    walsh = sorted((d[i] + d[j]) / 2 for i in range(n) for j in range(i, n))
    assert estimate == pytest.approx(float(scipy_stats.scoreatpercentile(walsh, 50)) if len(walsh) % 2 else
                                     (walsh[len(walsh) // 2 - 1] + walsh[len(walsh) // 2]) / 2)
    eps = 1e-9

    def p(theta: float, alternative: str) -> float:
        return scipy_stats.wilcoxon([x - theta for x in d], alternative=alternative, method="exact").pvalue

    assert p(low - eps, "greater") <= 0.025 < p(low + eps, "greater")
    assert p(high + eps, "less") <= 0.025 < p(high - eps, "less")
    assert 0.95 <= coverage < 0.99


def test_walsh_interval_with_too_few_values_or_mixed_infinities():
    from precond.sweep.stats import walsh_interval
    assert walsh_interval([1.0, 2.0, 3.0, 4.0, 5.0])[1] == (-math.inf, math.inf)  # 2⁻⁵ > 0.025: no interval
    assert walsh_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[1] == (1.0, 6.0)  # 2⁻⁶ ≤ 0.025: the extreme averages
    # one value unbounded below takes the top rank, so at n = 10 no centre above it can be rejected (T⁺ ≤ 45 < 47):
    # Wilcoxon cannot clear a bound with one such pair, where the sign test (median) can
    assert walsh_interval([1.0] * 9 + [-math.inf])[1][0] == -math.inf
    assert median_interval([1.0] * 9 + [-math.inf])[1][0] == 1.0
    with pytest.raises(ValueError, match="both"):
        walsh_interval([math.inf, -math.inf, 1.0])
