"""The tuning stage of a fair comparison: every arm searched in its own grid, the best setting
chosen by a stated rule, then confirmed on fresh seeds.

An experiment declares, per arm, overrides that define it (``{"preconditioner": "sgd"}``) and a
search space (``{"lr": [1e-3, ..., 1]}``, the cartesian product of the lists); tuning seeds;
confirmation seeds (disjoint from the tuning seeds). :func:`select` applies the rule:

1. most tuning seeds reaching the target (``steps_to_target`` not None), then
2. fewest mean steps to the target over those seeds, then
3. best mean final value of the target metric (lower for losses, higher for ``*acc*``);

a point whose run failed, diverged or did not finish ranks last. A chosen value at the edge of
its grid (the smallest or largest of ≥ 3 values) is flagged: the grid should be widened.
"""
from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field

from precond.errors import ConfigError
from precond.metrics import higher_is_better
from precond.settings import LEARNING_RATE, SEED, Seq

SELECTION_RULE = ("most tuning seeds reaching the target, then fewest mean steps to target, then best mean "
                  "final target metric; failed/diverged points rank last")


#: a verdict needs at least this many distinct confirmation seeds (the README promises it)
MIN_CONFIRMATION_SEEDS = 3
TUNING_SEEDS = Seq(SEED, min_len=1, distinct=True)
CONFIRMATION_SEEDS = Seq(SEED, min_len=MIN_CONFIRMATION_SEEDS, distinct=True)


@dataclass
class Arm:
    """One arm of a comparison: the overrides that define it and its own search space."""

    name: str
    overrides: dict
    grid: dict

    def points(self) -> list[dict]:
        """Every point of the grid (cartesian product, in the order the keys are written)."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


@dataclass
class TuningSpec:
    """What a tuned experiment searches: arms, their grids, tuning and confirmation seeds.

    ``grid`` is the default search space of every arm; an arm's own ``grid`` entries replace
    keys of it. Validated at construction (errors name the key under ``hydra.sweeper``).
    """

    arms: dict
    grid: dict = field(default_factory=dict)
    tuning_seeds: list = field(default_factory=lambda: [0])
    confirmation_seeds: list = field(default_factory=lambda: [100, 101, 102])

    def __post_init__(self) -> None:
        if not isinstance(self.arms, dict) or not self.arms:
            raise ConfigError("arms", "a mapping arm name → {overrides: {...}, grid: {...}}", self.arms)
        self.tuning_seeds = list(TUNING_SEEDS.check("tuning_seeds", self.tuning_seeds))
        self.confirmation_seeds = list(CONFIRMATION_SEEDS.check(
            "confirmation_seeds", self.confirmation_seeds,
            f"a claim judged on fewer than {MIN_CONFIRMATION_SEEDS} seeds, or on copies of one, proves nothing"))
        if set(self.tuning_seeds) & set(self.confirmation_seeds):
            raise ConfigError("confirmation_seeds", "seeds disjoint from tuning_seeds (a confirmation on the "
                              "seeds that chose the setting confirms nothing)", self.confirmation_seeds)
        self.arm_list = [self._arm(name, spec) for name, spec in self.arms.items()]

    def _arm(self, name: str, spec) -> Arm:
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"overrides", "grid"}:
            raise ConfigError(f"arms.{name}", "a mapping with keys overrides and grid", spec)
        overrides = spec.get("overrides") or {}
        grid = {**(self.grid or {}), **(spec.get("grid") or {})}
        if not isinstance(overrides, dict):
            raise ConfigError(f"arms.{name}.overrides", "a mapping config key → value", overrides)
        for key, values in grid.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"arms.{name}.grid.{key}", "a non-empty list of values", values)
            if key == "lr":
                Seq(LEARNING_RATE, min_len=1).check(f"arms.{name}.grid.lr", values)
        if "seed" in grid or "seed" in overrides:
            raise ConfigError(f"arms.{name}", "no seed in an arm (seeds are tuning_seeds/confirmation_seeds)",
                              "seed")
        return Arm(name, dict(overrides), grid)


@dataclass
class PointResult:
    """The tuning runs of one grid point of one arm."""

    point: dict
    summaries: list

    def score(self) -> tuple:
        """Sort key of :data:`SELECTION_RULE` (smaller is better)."""
        finished = [s for s in self.summaries if s.get("status") == "completed"]
        if len(finished) < len(self.summaries) or not finished:
            return (1, 0, math.inf, math.inf)
        reached = [s["steps_to_target"] for s in finished if s.get("steps_to_target") is not None]
        metric = finished[0].get("target_metric", "val/loss")
        sign = -1.0 if higher_is_better(metric) else 1.0
        values = [s.get(metric) for s in finished]
        final = sign * statistics.fmean(values) if all(v is not None for v in values) else math.inf
        return (0, -len(reached), statistics.fmean(reached) if reached else math.inf, final)


@dataclass
class Choice:
    """The chosen point of one arm and whether it sits at the edge of its grid."""

    arm: str
    chosen: dict
    at_edge: list
    score: tuple
    points: list


def at_edge(point: dict, grid: dict) -> list[str]:
    """Keys whose chosen value is the smallest or largest of a numeric grid of ≥ 3 values."""
    edges = []
    for key, value in point.items():
        values = grid[key]
        if len(values) >= 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            if value in (min(values), max(values)):
                edges.append(key)
    return edges


def select(arm: Arm, results: list[PointResult]) -> Choice:
    """The best point of ``arm`` by :data:`SELECTION_RULE` (the first in grid order on a tie)."""
    best = min(results, key=lambda r: r.score())
    if best.score()[0] == 1:
        raise RuntimeError(f"arm {arm.name}: every point of its grid failed or diverged; widen or move the grid")
    return Choice(arm.name, best.point, at_edge(best.point, arm.grid), best.score(), results)


def format_value(value) -> str:
    """A grid value as a Hydra override value (floats in a form that round-trips)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def overrides_for(arm: Arm, point: dict, seed: int, stage: str) -> list[str]:
    """The Hydra overrides of one run: the arm's own, the grid point, the seed, stage and arm tags."""
    merged = {**arm.overrides, **point}
    return [*(f"{k}={format_value(v)}" for k, v in merged.items()), f"seed={seed}", f"stage={stage}",
            f"arm={arm.name}"]

