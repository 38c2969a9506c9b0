"""Claims of the theory as data, and the rule that turns confirmation runs into a verdict.

A claim compares one summary value of two sides, seed by seed over the confirmation seeds::

    {"claim": "adam reaches the target in fewer steps than tuned sgd",
     "metric": "steps_to_target", "better": "adam", "than": "sgd", "direction": "lower"}

A side is an arm name (with the claim's ``metric``) or ``{"arm": ..., "metric": ...}`` (two
metrics of one arm: ``curvature/z/kappa`` of adam vs its ``curvature/p/kappa``); ``than`` may
also be a number, a threshold every seed's value is compared with (``null_dim`` above 0).
``steps_to_target``/``seconds_to_target`` of a run that never reached the target count as +∞.

The rule (:data:`RULE`) uses the seed spread, not only the means: paired by seed,

* ``holds``: the ``better`` side is strictly better on every confirmation seed;
* ``fails``: the ``than`` side is strictly better on every seed (a failed claim is a result);
* ``inconclusive``: mixed, tied, or a value missing (failed run, metric not logged).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

from precond.errors import ConfigError

RULE = ("paired by confirmation seed: holds when the claimed side is strictly better on every seed, fails when "
        "the other side is strictly better on every seed (for a threshold: when no seed is strictly beyond it), "
        "inconclusive otherwise (mixed, tied or missing)")
DIRECTIONS = ("lower", "higher")
#: metrics where "not reached" is a value: worse than any reached one
_TO_TARGET = ("steps_to_target", "seconds_to_target")


@dataclass
class Side:
    arm: str
    metric: str

    def label(self) -> str:
        return f"{self.arm} {self.metric}"


@dataclass
class Claim:
    """One machine-checkable claim (see the module docstring); validated at construction."""

    claim: str
    better: object
    than: object
    metric: Optional[str] = None
    direction: str = "lower"

    def __post_init__(self) -> None:
        if not isinstance(self.claim, str) or not self.claim:
            raise ConfigError("claim", "a sentence stating the claim", self.claim)
        if self.direction not in DIRECTIONS:
            raise ConfigError("direction", f"one of {list(DIRECTIONS)} (which values are better)", self.direction)
        self.sides = (self._side("better", self.better), self._side("than", self.than))

    def _side(self, key: str, value):
        if key == "than" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)  # a threshold
        if isinstance(value, str):
            if not self.metric:
                raise ConfigError("metric", "a summary metric (e.g. steps_to_target) when sides are arm names",
                                  self.metric)
            return Side(value, self.metric)
        if isinstance(value, dict) and set(value) == {"arm", "metric"}:
            return Side(str(value["arm"]), str(value["metric"]))
        raise ConfigError(key, "an arm name or {arm: ..., metric: ...}", value)


@dataclass
class Verdict:
    """A claim's verdict, the rule that gave it, the numbers it rests on, and those numbers in a line."""

    claim: str
    verdict: str
    rule: str
    evidence: dict
    summary: str = ""

    def as_dict(self) -> dict:
        return {"claim": self.claim, "verdict": self.verdict, "rule": self.rule, "evidence": self.evidence}

    def line(self) -> str:
        return f"**{self.verdict}** — {self.claim}: {self.summary}"


def _summary(evidence: dict) -> str:
    better, than = evidence["better"], evidence["than"]
    return (f"{better['side']} {_fmt(better)} vs {than['side']} {_fmt(than)} (mean over {evidence['seeds']} "
            f"seeds; {evidence['wins']} of {evidence['pairs']} seeds favour the claim, {evidence['losses']} oppose it)")


def _fmt(side: dict) -> str:
    n = len(side["values"])
    if side["mean"] is not None:
        return f"{side['mean']:.4g}"
    parts = [f"not reached on {side['never_reached']}/{n}"] if side["never_reached"] else []
    parts += [f"missing on {side['missing']}/{n}"] if side["missing"] else []
    return "(" + ", ".join(parts) + ")" if parts else "—"


def _value(summary: Optional[dict], metric: str) -> Optional[float]:
    if summary is None or summary.get("status") != "completed":
        return None
    value = summary.get(metric)
    if value is None and metric in _TO_TARGET:
        return math.inf
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def judge(claim: Claim, runs: dict) -> Verdict:
    """The verdict of ``claim`` from ``runs``: ``{arm: {seed: summary}}`` of the confirmation stage."""
    better, than = claim.sides
    sign = 1.0 if claim.direction == "lower" else -1.0
    if isinstance(than, float):  # a threshold: the same value on every seed
        seeds = sorted(runs.get(better.arm, {}))
        pairs = [(_value(runs[better.arm][s], better.metric), than) for s in seeds]
    else:
        seeds = sorted(set(runs.get(better.arm, {})) | set(runs.get(than.arm, {})))
        pairs = [(_value(runs.get(better.arm, {}).get(s), better.metric),
                  _value(runs.get(than.arm, {}).get(s), than.metric)) for s in seeds]
    wins = sum(1 for a, b in pairs if a is not None and b is not None and sign * a < sign * b)
    # against a threshold a tie violates the claim ("above 0" fails at 0); between two sides it is a tie
    losses = sum(1 for a, b in pairs if a is not None and b is not None and (
        sign * a >= sign * b if isinstance(than, float) else sign * a > sign * b))
    complete = bool(pairs) and all(a is not None and b is not None for a, b in pairs)
    if complete and wins == len(pairs):
        verdict = "holds"
    elif complete and losses == len(pairs):
        verdict = "fails"
    else:
        verdict = "inconclusive"

    def side(s, values: list) -> dict:
        if isinstance(s, float):
            return {"side": "threshold", "values": values, "never_reached": 0, "missing": 0, "mean": s}
        reached = [v for v in values if v is not None and v != math.inf]
        never = sum(1 for v in values if v == math.inf)
        missing = sum(1 for v in values if v is None)
        return {"side": s.label(), "values": [None if v is None or v == math.inf else v for v in values],
                "never_reached": never, "missing": missing,
                "mean": statistics.fmean(reached) if reached and not never and not missing else None}

    evidence = {"seeds": len(seeds), "pairs": len(pairs), "wins": wins, "losses": losses,
                "direction": claim.direction, "seed_list": seeds,
                "better": side(better, [a for a, _ in pairs]), "than": side(than, [b for _, b in pairs])}
    return Verdict(claim.claim, verdict, RULE, evidence, _summary(evidence))
