"""Distribution-free statistics for paired comparisons over seeds (exact for the sample sizes used).

* :func:`sign_test` — one-sided exact sign test: ``P(W ≥ wins)`` for ``W ~ Binomial(wins + losses, ½)``
  (ties are dropped before it is called).
* :func:`signed_rank_test` — one-sided exact Wilcoxon signed-rank test of ``H₀``: the differences
  are symmetric about 0, against "shifted upwards": ``P(T⁺ ≥ t⁺)`` with ``T⁺`` the sum of the ranks of
  the positive differences (zeros dropped, tied magnitudes get mid-ranks; the null distribution is
  enumerated over the 2ⁿ sign patterns of the actual ranks, so ties are handled exactly).
* :func:`median_interval` — the median of paired effects with the order-statistic confidence
  interval ``[x₍ₖ₎, x₍ₙ₋ₖ₊₁₎]``, ``k`` the largest with ``P(Binomial(n, ½) < k) ≤ α/2``: its coverage is
  at least ``1 − α`` for any continuous distribution (the interval the sign test inverts to). It
  works with ±∞ values, which stand for censored pairs (one side never reached the target).
* :func:`walsh_interval` — the Hodges–Lehmann estimate (median of the Walsh averages ``(xᵢ + xⱼ)/2``,
  ``i ≤ j``) with the distribution-free interval ``[W₍N−c+1₎, W₍c₎]`` of the sorted Walsh averages, ``c`` the
  smallest with ``P(T⁺ ≥ c) ≤ α/2`` under the signed-rank null: the interval the Wilcoxon test inverts to
  (its coverage is at least ``1 − α`` for any continuous distribution symmetric about its centre).
* :func:`smallest_p` — the smallest one-sided p-value either exact test can give on ``n`` pairs, ``2⁻ⁿ``.
* :func:`holm` — Holm's step-down adjustment of a family of p-values (controls the family-wise error).
* :func:`loglog_slope` — a power law ``y ∝ xᵇ`` fitted by least squares on logs, with a percentile
  bootstrap interval for ``b`` over independent points; :meth:`SlopeFit.judge` turns it into a verdict.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product


def _binomial_tail(n: int, k: int) -> float:
    """``P(X ≥ k)`` for ``X ~ Binomial(n, ½)``."""
    if k <= 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: the chance of ``wins`` or more wins in ``wins + losses`` fair coin flips."""
    return _binomial_tail(wins + losses, wins)


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n of ``values``; tied values share their mid-rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


#: above this many non-zero differences the signed-rank null is taken from its normal approximation
EXACT_SIGNED_RANK_MAX = 20


def signed_rank_test(differences: Sequence[float]) -> float:
    """One-sided Wilcoxon signed-rank p-value for "the differences are shifted above 0" (zeros dropped)."""
    d = [x for x in differences if x != 0]
    n = len(d)
    if n == 0:
        return 1.0
    ranks = _ranks([abs(x) for x in d])
    observed = sum(r for r, x in zip(ranks, d) if x > 0)
    if n <= EXACT_SIGNED_RANK_MAX:
        at_least = sum(1 for signs in product((0, 1), repeat=n)
                       if sum(r for r, s in zip(ranks, signs) if s) >= observed - 1e-9)
        return at_least / 2**n
    mean = sum(ranks) / 2
    sd = math.sqrt(sum(r * r for r in ranks) / 4)
    z = (observed - mean - 0.5) / sd  # continuity correction
    return 0.5 * math.erfc(z / math.sqrt(2))


def median_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, tuple[float, float], float]:
    """(median, (low, high), coverage) of ``values``; ``(-inf, inf)`` when n is too small for ``1 − alpha``."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    median = x[n // 2] if n % 2 else _mid(x[n // 2 - 1], x[n // 2])
    k = 0
    while k + 1 <= n // 2 and 1 - 2 * (1 - _binomial_tail(n, k + 1)) >= 1 - alpha:
        k += 1  # P(X < k+1) ≤ α/2: the (k+1)-th order statistics still bound a 1 − α interval
    if k == 0:
        return median, (-math.inf, math.inf), 1.0
    coverage = 1 - 2 * (1 - _binomial_tail(n, k))
    return median, (x[k - 1], x[n - k]), coverage


def _signed_rank_null(n: int) -> list[int]:
    """``counts[t]`` = how many of the 2ⁿ sign patterns of the ranks 1..n give ``T⁺ = t`` (no ties)."""
    counts = [1]
    for rank in range(1, n + 1):
        grown = counts + [0] * rank
        for t, c in enumerate(counts):
            grown[t + rank] += c
        counts = grown
    return counts


def walsh_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, tuple[float, float], float]:
    """(Hodges–Lehmann estimate, (low, high), coverage) of ``values``: the estimator and interval that go with the
    Wilcoxon signed-rank test. ``values`` may hold infinities of one sign (censored bounds); a Walsh average with
    an infinite term is that infinity. ``(-inf, inf)`` with coverage 1 when n is too small for ``1 − alpha``."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("walsh_interval needs at least one value")
    if math.inf in x and -math.inf in x:
        raise ValueError("walsh_interval: values hold both +inf and -inf, whose average is undefined")
    walsh = sorted((x[i] + x[j]) / 2 for i in range(n) for j in range(i, n))
    big_n = len(walsh)
    estimate = walsh[big_n // 2] if big_n % 2 else _mid(walsh[big_n // 2 - 1], walsh[big_n // 2])
    counts = _signed_rank_null(n)
    tail, c = 0, big_n + 1  # tail = #patterns with T⁺ ≥ c
    while c - 1 >= 0 and (tail + counts[c - 1]) / 2**n <= alpha / 2:
        c -= 1
        tail += counts[c]
    if c > big_n:
        return estimate, (-math.inf, math.inf), 1.0
    return estimate, (walsh[big_n - c], walsh[c - 1]), 1 - 2 * tail / 2**n


def smallest_p(n: int) -> float:
    """The smallest one-sided p-value of the exact sign or signed-rank test on ``n`` untied pairs: every pair on
    one side, ``2⁻ⁿ``."""
    return 2.0 ** -n


def _mid(a: float, b: float) -> float:
    """The midpoint of two middle values; ±∞ (censored pairs) stay infinite, and −∞ with +∞ gives 0."""
    if a == -math.inf and b == math.inf:
        return 0.0
    return (a + b) / 2


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input's order: ``max over j ≤ i of min(1, (m − j) p₍ⱼ₎)``."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class SlopeFit:
    """Least-squares fit ``log y = a + b log x`` with a percentile bootstrap interval for the slope ``b``."""

    slope: float
    intercept: float
    ci: tuple[float, float]
    n: int
    reps: int

    def judge(self, expected: float, tolerance: float) -> str:
        """``holds`` when the interval lies inside ``expected ± tolerance``, ``fails`` when it lies wholly
        outside it, else ``inconclusive``."""
        low, high = expected - tolerance, expected + tolerance
        if low <= self.ci[0] and self.ci[1] <= high:
            return "holds"
        if self.ci[1] < low or self.ci[0] > high:
            return "fails"
        return "inconclusive"


def _ols(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx if sxx > 0 else math.nan
    return slope, my - slope * mx


def loglog_slope(x: Sequence[float], y: Sequence[float], reps: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> SlopeFit:
    """Slope of ``log y`` on ``log x`` (natural logs; the slope does not depend on the base) over independent
    points, with the ``1 − alpha`` percentile interval of ``reps`` bootstrap resamples of the points
    (resamples whose ``x`` are all equal are drawn again)."""
    if len(x) != len(y) or len(x) < 3:
        raise ValueError("loglog_slope needs at least 3 (x, y) pairs of equal length")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("loglog_slope needs positive x and y")
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    slope, intercept = _ols(lx, ly)
    rng = random.Random(seed)
    slopes = []
    while len(slopes) < reps:
        idx = [rng.randrange(len(lx)) for _ in lx]
        if len({lx[i] for i in idx}) > 1:
            slopes.append(_ols([lx[i] for i in idx], [ly[i] for i in idx])[0])
    slopes.sort()
    low = slopes[int(math.floor(alpha / 2 * reps))]
    high = slopes[min(reps - 1, int(math.ceil((1 - alpha / 2) * reps)) - 1)]
    return SlopeFit(slope, intercept, (low, high), len(lx), reps)
