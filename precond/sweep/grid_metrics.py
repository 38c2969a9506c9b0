"""Values of an arm's whole tuning grid, one per tuning seed: how broad its optimum is, how its best values couple.

For one arm, one tuning seed and ``f(x)`` the final target metric of the run at grid point ``x``
(a run that did not complete counts as worse than every completed one):

* ``grid/near_optimal_fraction`` — the fraction of grid points within :data:`NEAR_OPTIMAL` of that
  seed's best ``f`` (an absolute 0.01 for accuracies, a factor 1.1 for losses). A broad optimum
  (Loshchilov & Hutter's claim for AdamW against Adam + L2 over ``lr × λ``) is a large fraction.
* ``grid/target_fraction`` — the fraction of grid points whose run reached and held the target: the
  part of the search space that works at all.
* ``grid/best_value_slope`` — for a grid of two numeric keys ``(a, b)`` (``lr`` and ``λ``): per value of
  ``a`` the ``b`` with the best ``f``, and the least-squares slope of ``log b*`` on ``log a``. It is 0
  when the best ``λ`` does not depend on ``lr`` (decoupled) and −1 when only the product ``lr·λ``
  matters (torch's AdamW decays by ``lr·λ`` per step, so there "decoupled" reads as slope −1).

* ``grid/pareto@S`` — the best final target metric among grid points whose final ``reg/sparsity`` is at
  least ``S``: the sparsity–accuracy Pareto front read at sparsity ``S``, so that two L1 variants are
  compared at matched sparsity, each with its own ``λ`` and ``lr`` (undefined when no point is that sparse).

These are claims' values with ``stage: tuning`` (:mod:`precond.sweep.verdicts`): paired by tuning seed,
so a grid claim needs many tuning seeds.
"""
from __future__ import annotations

import math
from typing import Optional

from precond.metrics import higher_is_better
from precond.settings import is_finite_number, is_number

#: how close to the best a grid point must be to count as near-optimal: absolute for accuracies, a ratio for losses
NEAR_OPTIMAL = {"acc": 0.01, "loss_ratio": 1.1}
GRID_METRICS = ("grid/near_optimal_fraction", "grid/target_fraction", "grid/best_value_slope")
PARETO = "grid/pareto@"
SPARSITY = "reg/sparsity"


def is_grid_metric(name: str) -> bool:
    return name in GRID_METRICS or pareto_level(name) is not None


def pareto_level(name: str) -> Optional[float]:
    """``S`` of ``grid/pareto@S`` (a number in [0, 1]), else None."""
    if not name.startswith(PARETO):
        return None
    try:
        level = float(name[len(PARETO):])
    except ValueError:
        return None
    return level if 0.0 <= level <= 1.0 else None


def pareto_value(points: list[tuple[float, float]], level: float, metric: str) -> Optional[float]:
    """The best ``metric`` among ``(sparsity, value)`` points with sparsity ≥ ``level`` (None: none that sparse)."""
    eligible = [v for sp, v in points if sp >= level and math.isfinite(v)]
    if not eligible:
        return None
    return max(eligible) if higher_is_better(metric) else min(eligible)


def point_of(summary: dict, grid: dict) -> Optional[tuple]:
    """The grid point a run trained at, read from its overrides (``key=value``), or None."""
    given = dict(o.split("=", 1) for o in summary.get("overrides", []) if "=" in o)
    point = []
    for key, values in grid.items():
        if key not in given:
            return None
        match = [v for v in values if _same(v, given[key])]
        if not match:
            return None
        point.append(match[0])
    return tuple(point)


def _same(value, text: str) -> bool:
    try:
        return math.isclose(float(value), float(text), rel_tol=1e-12)
    except (TypeError, ValueError):
        return str(value) == text


def _goodness(summary: dict, metric: str) -> float:
    """``f`` signed so that larger is better; ``-inf`` for a run that did not complete with a finite value."""
    value = summary.get(metric)
    if summary.get("status") != "completed" or not is_finite_number(value):
        return -math.inf
    return float(value) if higher_is_better(metric) else -math.log(max(float(value), 1e-300))


def near_optimal_fraction(goodness: dict, metric: str) -> float:
    """The fraction of points within :data:`NEAR_OPTIMAL` of the best (``goodness``: point → signed value)."""
    best = max(goodness.values())
    if best == -math.inf:
        return 0.0
    width = NEAR_OPTIMAL["acc"] if higher_is_better(metric) else math.log(NEAR_OPTIMAL["loss_ratio"])
    return sum(g >= best - width for g in goodness.values()) / len(goodness)


def best_value_slope(goodness: dict, grid: dict) -> Optional[float]:
    """Least-squares slope of log(best second key) on log(first key) over the first key's values (None unless
    the grid has exactly two positive numeric keys with ≥ 2 values each)."""
    keys = list(grid)
    if len(keys) != 2 or any(len(grid[k]) < 2 for k in keys):
        return None
    if not all(is_number(v) and v > 0 for k in keys for v in grid[k]):
        return None
    xs, ys = [], []
    for a in grid[keys[0]]:
        row = {b: goodness.get((a, b), -math.inf) for b in grid[keys[1]]}
        if max(row.values()) == -math.inf:
            continue
        xs.append(math.log(a))
        ys.append(math.log(max(row, key=row.get)))  # the first best on ties (grid order)
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def grid_values(summaries: list[dict], grid: dict, metric: str, pareto_levels: tuple = ()) -> dict:
    """``{seed: {"status": "completed", "grid/...": value}}`` for one arm's tuning runs; a seed whose grid is
    incomplete (a point with no run) gets ``status: failed`` (its grid values would be read from a partial grid).
    ``pareto_levels``: the sparsities ``S`` at which ``grid/pareto@S`` is read."""
    by_seed: dict = {}
    fronts: dict = {}
    held: dict = {}
    for summary in summaries:
        point = point_of(summary, grid)
        if point is not None:
            by_seed.setdefault(summary.get("seed"), {})[point] = _goodness(summary, metric)
            held.setdefault(summary.get("seed"), {})[point] = (summary.get("status") == "completed"
                                                               and summary.get("steps_to_target") is not None)
            value, sparsity = summary.get(metric), summary.get(SPARSITY)
            if summary.get("status") == "completed" and is_number(value) and is_number(sparsity):
                fronts.setdefault(summary.get("seed"), []).append((float(sparsity), float(value)))
    size = math.prod(len(v) for v in grid.values())
    out = {}
    for seed, goodness in by_seed.items():
        if len(goodness) < size:
            out[seed] = {"status": "failed", "error": f"{size - len(goodness)} grid points have no run"}
            continue
        out[seed] = {"status": "completed", "grid/near_optimal_fraction": near_optimal_fraction(goodness, metric),
                     "grid/target_fraction": sum(held[seed].values()) / size,
                     "grid/best_value_slope": best_value_slope(goodness, grid),
                     **{f"{PARETO}{level:g}": pareto_value(fronts.get(seed, []), level, metric)
                        for level in pareto_levels}}
    return out
