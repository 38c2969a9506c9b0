"""The tuning stage of a fair comparison: every arm searched in its own grid, the best setting
chosen by a stated rule, then confirmed on fresh seeds.

An experiment declares, per arm, overrides that define it (``{"preconditioner": "sgd"}``) and a
search space (``{"lr": [1e-3, ..., 1]}``, the cartesian product of the lists); tuning seeds;
confirmation seeds (at least 3, distinct, disjoint from the at least 2 tuning seeds).
:func:`select` applies :data:`SELECTION_RULE`:

1. a grid point is *eligible* when every one of its tuning runs completed and reached **and held**
   the target (``steps_to_target``, :data:`precond.metrics.TIME_TO_TARGET_RULE`); the eligible
   point with the lowest **median** steps to target wins (ties: the best median final metric);
2. when no point is eligible so (a target nobody holds), the points whose tuning runs all completed
   are ranked by their median final target metric (lower for losses, higher for ``*acc*``);
3. an arm with neither is **invalid** (:class:`NoEligiblePoint`): it is reported with its reason and
   never "chosen".

A point that touched the target and lost it again is not eligible: a setting chosen for a lucky
first crossing does not survive fresh seeds. A chosen value at the edge of its grid (the smallest
or largest of ≥ 3 values) is flagged: the grid should be widened.
"""
from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field
from typing import Optional

from precond.errors import ConfigError
from precond.metrics import higher_is_better
from precond.settings import LEARNING_RATE, SEED, Int, Num, Seq, is_finite_number, is_number
from precond.settings import Choice as OneOf

SELECTION_RULE = ("a grid point is eligible when every tuning run completed and reached and held the target; the "
                  "eligible point with the lowest median steps to target is chosen (ties: the best median final "
                  "target metric); when no point is eligible so, the points whose tuning runs all completed are "
                  "ranked by their median final target metric; an arm with neither is invalid")


#: a verdict needs at least this many distinct confirmation seeds (the README promises it)
MIN_CONFIRMATION_SEEDS = 3
#: a setting chosen on one seed is chosen on noise: at least two tuning seeds
MIN_TUNING_SEEDS = 2
TUNING_SEEDS = Seq(SEED, min_len=MIN_TUNING_SEEDS, distinct=True)
#: problem instances a confirmation may cycle through (each draw is its own pack group)
MAX_DATA_DRAWS = 10
#: staged confirmation: at most this many looks (each spends α/looks, so more looks cost power at each)
MAX_LOOKS = 4
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
    tuning_seeds: list = field(default_factory=lambda: [0, 1])
    confirmation_seeds: list = field(default_factory=lambda: list(range(100, 110)))

    #: ``{relative_to: <arm>, factor: <number>}``: the target is set from that arm's tuning runs
    target: Optional[dict] = None
    #: overrides of the tuning runs only, for what the selection never reads (``curvature.enabled: false``: κ
    #: is measured on the confirmation runs the claims are judged on, not on every grid point)
    tuning_overrides: dict = field(default_factory=dict)
    #: ``{config key: {series: [arm, ...]}}``: arms that differ in that key's value (set in their overrides), read
    #: as a sensitivity curve per series (the report plots the confirmation runs against the value)
    sensitivity: dict = field(default_factory=dict)
    #: staged confirmation: look k judges the first ``stages[k]`` confirmation seeds, and only the claims still
    #: inconclusive get the next look's seeds (null: one look on every confirmation seed)
    stages: Optional[list] = None
    #: problem instances: confirmation seed number i trains on data draw ``i mod data_draws`` (``dataset.data_seed``
    #: = the config's data_seed + draw); 1 keeps one draw. Tuning always runs on draw 0
    data_draws: int = 1

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
        self.stages = self._check_stages()
        self.data_draws = Int(1, MAX_DATA_DRAWS).check(
            "data_draws", self.data_draws, "how many problem instances the confirmation seeds cycle through")
        self.arm_list = [self._arm(name, spec) for name, spec in self.arms.items()]
        if not isinstance(self.tuning_overrides, dict) or set(self.tuning_overrides) - TUNING_ONLY:
            raise ConfigError("tuning_overrides", f"a mapping of keys among {sorted(TUNING_ONLY)} (values the "
                              "selection never reads)", self.tuning_overrides)
        self._check_sensitivity()
        if self.target is not None:
            if not isinstance(self.target, dict) or set(self.target) != {"relative_to", "factor"}:
                raise ConfigError("target", "{relative_to: <arm>, factor: <number>}", self.target)
            OneOf(tuple(self.arms)).check("target.relative_to", self.target["relative_to"])
            self.target = {**self.target, "factor": Num(0, lo_open=True).check("target.factor", self.target["factor"])}

    def _check_stages(self) -> list:
        """Strictly increasing seed counts, the first at least :data:`MIN_CONFIRMATION_SEEDS`, the last all the
        confirmation seeds (the cap), at most :data:`MAX_LOOKS` looks."""
        n = len(self.confirmation_seeds)
        if self.stages is None:
            return [n]
        stages = Seq(Int(MIN_CONFIRMATION_SEEDS), min_len=1).check(
            "stages", self.stages, "seed counts per look, e.g. [10, 20, 40] with 40 confirmation seeds")
        if len(stages) > MAX_LOOKS or any(b <= a for a, b in zip(stages, stages[1:])):
            raise ConfigError("stages", f"at most {MAX_LOOKS} strictly increasing seed counts (each look spends "
                              "α/looks)", list(stages))
        if stages[-1] != n:
            raise ConfigError("stages", f"a last stage equal to the number of confirmation_seeds ({n}): the cap "
                              "on seeds", list(stages),
                              f"list {stages[-1]} confirmation seeds" if stages[-1] > n else
                              f"end the stages at {n}, or list only {stages[-1]} confirmation seeds")
        return list(stages)

    def _check_sensitivity(self) -> None:
        if not isinstance(self.sensitivity, dict):
            raise ConfigError("sensitivity", "a mapping config key → {series: [arm, ...]}", self.sensitivity)
        arms = {arm.name: arm for arm in self.arm_list}
        for key, series in self.sensitivity.items():
            if not isinstance(series, dict) or not series:
                raise ConfigError(f"sensitivity.{key}", "a mapping series name → [arm, ...]", series)
            for name, members in series.items():
                if not isinstance(members, (list, tuple)) or len(members) < 2:
                    raise ConfigError(f"sensitivity.{key}.{name}", "a list of at least two arms", members)
                for arm in members:
                    OneOf(tuple(arms)).check(f"sensitivity.{key}.{name}", arm)
                    value = arms[arm].overrides.get(key)
                    if not is_number(value):
                        raise ConfigError(f"arms.{arm}.overrides.{key}", f"a number (the arm is on the {key} "
                                          "sensitivity curve)", value)

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
    """The tuning runs of one grid point of one arm, and where they stand under :data:`SELECTION_RULE`."""

    point: dict
    summaries: list

    def _completed(self) -> bool:
        return bool(self.summaries) and all(s.get("status") == "completed" for s in self.summaries)

    def _final(self) -> list:
        metric = self.summaries[0].get("target_metric", "val/loss")
        return [s.get(metric) for s in self.summaries]

    def standing(self) -> tuple[str, str]:
        """``held`` (every tuning run completed, reached and held the target), ``completed`` (every run
        completed with a finite final metric) or ``ineligible``, with the reason."""
        if not self._completed():
            statuses = sorted({s.get("status", "missing") for s in self.summaries} - {"completed"})
            return "ineligible", f"a tuning run ended {', '.join(statuses) or 'missing'}"
        if not all(is_finite_number(v) for v in self._final()):
            return "ineligible", "a tuning run has no finite final target metric"
        held = [s.get("steps_to_target") is not None for s in self.summaries]
        if all(held):
            return "held", "every tuning run reached and held the target"
        return "completed", f"{held.count(False)} of {len(held)} tuning runs did not reach and hold the target"

    def median_steps(self) -> float:
        return statistics.median(s["steps_to_target"] for s in self.summaries)

    def median_final(self) -> float:
        """The median final target metric, signed so that smaller is better."""
        metric = self.summaries[0].get("target_metric", "val/loss")
        return (-1.0 if higher_is_better(metric) else 1.0) * statistics.median(self._final())

    def score(self) -> tuple:
        """Sort key of :data:`SELECTION_RULE` (smaller is better)."""
        standing, _ = self.standing()
        if standing == "held":
            return (0, self.median_steps(), self.median_final())
        if standing == "completed":
            return (1, math.inf, self.median_final())
        return (2, math.inf, math.inf)


class NoEligiblePoint(RuntimeError):
    """An arm none of whose grid points can be chosen: the arm is invalid, never silently "chosen"."""


@dataclass
class Choice:
    """The chosen point of one arm, on which basis, and whether it sits at the edge of its grid."""

    arm: str
    chosen: dict
    at_edge: list
    score: tuple
    points: list
    basis: str


def at_edge(point: dict, grid: dict) -> list[str]:
    """Keys whose chosen value is the smallest or largest of a numeric grid of ≥ 3 values."""
    edges = []
    for key, value in point.items():
        values = grid[key]
        if len(values) >= 3 and all(is_number(v) for v in values):
            if value in (min(values), max(values)):
                edges.append(key)
    return edges


#: the selection rules a claim may ask for: ``speed`` (:data:`SELECTION_RULE`, the experiment's) or ``final`` (the
#: best median final target metric over the tuning seeds, whether or not the target was held)
SELECTIONS = ("speed", "final")
FINAL_SELECTION_RULE = ("for claims on a final value (selection: final): the point whose tuning runs all completed "
                        "with the best median final target metric over at least 5 tuning seeds, whether or not it "
                        "held the target")
#: a choice by median final value needs this many tuning seeds (fewer: the median is one or two runs)
MIN_FINAL_SELECTION_SEEDS = 5


def select(arm: Arm, results: list[PointResult], rule: str = "speed") -> Choice:
    """The best point of ``arm`` by :data:`SELECTION_RULE` (``rule="speed"``) or :data:`FINAL_SELECTION_RULE`
    (``rule="final"``), the first in grid order on a tie.

    Raises :class:`NoEligiblePoint` when no point's tuning runs all completed with a finite metric.
    """
    if rule == "final":
        ranked = [r for r in results if r.standing()[0] != "ineligible"]
        if not ranked:
            reasons = sorted({r.standing()[1] for r in results})
            raise NoEligiblePoint(f"arm {arm.name}: no grid point completed on every tuning seed "
                                  f"({'; '.join(reasons)}); widen or move the grid")
        best = min(ranked, key=lambda r: r.median_final())
        return Choice(arm.name, best.point, at_edge(best.point, arm.grid), (1, math.inf, best.median_final()),
                      results, "median final target metric (selection: final)")
    best = min(results, key=lambda r: r.score())
    tier = best.score()[0]
    if tier == 2:
        reasons = sorted({r.standing()[1] for r in results})
        raise NoEligiblePoint(f"arm {arm.name}: no grid point is eligible ({'; '.join(reasons)}); widen or move "
                              "the grid")
    basis = "median steps to reach and hold the target" if tier == 0 else \
        "median final target metric (no point reached and held the target on every tuning seed)"
    return Choice(arm.name, best.point, at_edge(best.point, arm.grid), best.score(), results, basis)


def format_value(value) -> str:
    """A grid value as a Hydra override value (floats in a form that round-trips)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):  # e.g. preconditioner.options of a torch_optim arm: Hydra's {key:value} syntax
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


#: keys a tuned experiment may set for its tuning runs only: they change what is measured, not how a run trains
TUNING_ONLY = frozenset({"curvature.enabled", "checkpoint_every", "checkpoint_every_s"})


def overrides_for(arm: Arm, point: dict, seed: int, stage: str, tuning_only: Optional[dict] = None) -> list[str]:
    """The Hydra overrides of one run: the arm's own, the grid point, the seed, stage and arm tags (and, for
    tuning runs, ``tuning_only``)."""
    merged = {**arm.overrides, **point, **((tuning_only or {}) if stage == "tuning" else {})}
    return [*(f"{k}={'null' if v is None else format_value(v)}" for k, v in merged.items()), f"seed={seed}",
            f"stage={stage}",
            f"arm={arm.name}"]



def data_draw(spec: TuningSpec, seed_index: int, base_data_seed: int) -> dict:
    """The data draw of the confirmation seed at ``seed_index``, as extra point values (empty with one draw):
    named in the run's overrides and in its dir, so that a run dir never holds another draw than its name says."""
    if spec.data_draws == 1:
        return {}
    return {"dataset.data_seed": base_data_seed + seed_index % spec.data_draws}


def run_subdir(arm: Arm, point: dict, seed: int, stage: str) -> str:
    """Where a tuned sweep's run lives inside the sweep dir, named by what it holds
    (``tuning/adam/lr=0.1/seed0``): re-running the experiment with more seeds finds every earlier run
    in its place (reused, not redone), and a dir never holds another run than its name says."""
    values = ",".join(f"{k}={format_value(v)}" for k, v in point.items()) or "default"
    return "/".join(part.replace("/", "_") for part in (stage, arm.name, values, f"seed{seed}"))


def subdir_override(arm: Arm, point: dict, seed: int, stage: str) -> str:
    return f"hydra.sweep.subdir='{run_subdir(arm, point, seed, stage)}'"


RELATIVE_TARGET_RULE = ("the target is the median over tuning seeds of the baseline arm's best final value (over "
                        "its grid) times the factor; every tuning run's time to target is re-read from its metrics "
                        "with it, and the confirmation runs train with it")


def relative_target(baseline: list[dict], factor: float) -> float:
    """The target set from a tuned baseline (in the spirit of AlgoPerf's workload targets): per tuning seed
    the best final ``target_metric`` of the baseline's completed runs over its grid, the median of those
    over seeds, times ``factor`` (above 1 loosens a loss target, below 1 an accuracy target)."""
    done = [s for s in baseline if s.get("status") == "completed"]
    if not done:
        raise NoEligiblePoint("the baseline arm of the relative target has no completed tuning run")
    metric = done[0].get("target_metric", "val/loss")
    pick = max if higher_is_better(metric) else min
    best = [pick(s[metric] for s in done if s.get("seed") == seed and is_number(s.get(metric)))
            for seed in sorted({s.get("seed") for s in done})]
    return statistics.median(best) * factor
