"""Claims of the theory as data, and the stated statistical rule that turns runs into a verdict.

A claim compares one summary value of two sides, paired by confirmation seed::

    {"claim": "adam reaches the target in fewer steps than tuned sgd",
     "metric": "steps_to_target", "better": "adam", "than": "sgd", "direction": "lower"}

A side is an arm name (with the claim's ``metric``) or ``{"arm": ..., "metric": ...}``; ``than`` may
also be a number (a threshold). :data:`RULE` is the rule every verdict states:

* **Effect per seed**, oriented so that a positive value favours the claim: the log-ratio of the two
  sides for positive quantities (steps, seconds, κ, λmax: ``scale: ratio``), their difference
  otherwise (accuracies, sparsity: ``scale: difference``). A side that never reached the target
  (steps/seconds to target of ``∞``) is *censored*: its pair counts by its sign only.
* **Test**: one-sided exact sign test after dropping ties when any pair is censored, else the exact
  Wilcoxon signed-rank test; the p-value is two-sided (twice the smaller one-sided one), and
  Holm-adjusted over the empirical claims of one experiment.
* **Effect size**: the median effect with a distribution-free ≥ 95 % interval (order statistics).
* **Margin** of practical relevance per claim: default a ratio of 1.25 for steps, seconds and κ, 0.5
  points (0.005) for accuracies, 0 otherwise (``margin:`` in the claim sets it).
* **States**: ``holds`` — adjusted p < 0.05 and median effect beyond +margin; ``fails`` — the mirror
  image; ``equivalent`` — the interval lies inside ±margin ("the advantage is gone") and no pair is a
  tie of two sides that both never reached the target (that tie measured nothing); ``inconclusive``
  — none of these; ``invalid`` — an arm never trained (no eligible grid point), more than one declared
  run failed or is missing, or the metric is undefined on more than one seed; ``identity`` — a claim
  true by construction (``identity: true``), verified on every seed to its ``tolerance``, and kept out
  of the count of empirical support (a violated identity ``fails``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from precond.errors import ConfigError
from precond.settings import Choice, Flag, Num
from precond.sweep.stats import holm, median_interval, sign_test, signed_rank_test

ALPHA = 0.05
RULE = ("per seed the log-ratio (steps, seconds, κ) or difference (accuracies) of the two sides, a never-reached "
        "side counting by its sign; exact sign test (censored pairs) or Wilcoxon signed-rank, two-sided, "
        "Holm-adjusted within the experiment; holds/fails when adjusted p < 0.05 and the median effect is beyond "
        "the margin, equivalent when its ≥ 95 % interval lies inside ±margin (and no pair is two never-reached "
        "sides); invalid when an arm never trained, "
        "more than one run failed or the metric is undefined on more than one seed")
STATES = ("holds", "fails", "equivalent", "inconclusive", "invalid", "identity")
#: where a claim's values come from: the confirmation runs of each arm's chosen setting (default), or each arm's
#: whole tuning grid, one value per tuning seed (``grid/*`` metrics, :mod:`precond.sweep.grid_metrics`)
STAGES = ("confirmation", "tuning")
DIRECTIONS = ("lower", "higher")
SCALES = ("ratio", "difference")
#: metrics where "not reached" is a value: worse than any reached one
_TO_TARGET = ("steps_to_target", "seconds_to_target", "steps_to_first_hit", "seconds_to_first_hit",
              "steps_to_target_after_warmup", "steps_to_first_hit_after_warmup")
_DEFAULT_RATIO_MARGIN = 1.25
_DEFAULT_ACC_MARGIN = 0.005


@dataclass
class Side:
    arm: str
    metric: str

    def label(self) -> str:
        return f"{self.arm} {self.metric}"


def default_scale(metric: str) -> str:
    """Positive quantities compare as ratios; anything else as differences."""
    positive = metric in _TO_TARGET or metric.split("/")[-1] in ("kappa", "kappa_plus", "lam_max",
                                                                  "kappa_hidden", "kappa_hidden_plus")
    return "ratio" if positive else "difference"


@dataclass
class Claim:
    """One machine-checkable claim (see the module docstring); validated at construction."""

    claim: str
    better: object
    than: object
    metric: Optional[str] = None
    direction: str = "lower"
    scale: Optional[str] = None
    margin: Optional[float] = None
    identity: bool = False
    tolerance: Optional[float] = None
    stage: str = "confirmation"

    def __post_init__(self) -> None:
        if not isinstance(self.claim, str) or not self.claim:
            raise ConfigError("claim", "a sentence stating the claim", self.claim)
        self.stage = Choice(STAGES).check("stage", self.stage, "tuning: judged on grid/* metrics over the tuning seeds")
        self.direction = Choice(DIRECTIONS).check("direction", self.direction, "which values are better")
        self.identity = Flag().check("identity", self.identity)
        self.sides = (self._side("better", self.better), self._side("than", self.than))
        self.scale = Choice(SCALES, optional=True).check("scale", self.scale) or default_scale(self.sides[0].metric)
        self.tolerance = Num(0, optional=True).check("tolerance", self.tolerance)
        if self.margin is None:
            metric = self.sides[0].metric
            self.margin = _DEFAULT_RATIO_MARGIN if self.scale == "ratio" else (
                _DEFAULT_ACC_MARGIN if "acc" in metric else 0.0)
        self.margin = Num(1 if self.scale == "ratio" else 0).check(
            "margin", self.margin, "a ratio >= 1 on the ratio scale, a difference >= 0 otherwise")

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

    @property
    def log_margin(self) -> float:
        """The margin on the effect's scale (log of the ratio, or the difference itself)."""
        return math.log(self.margin) if self.scale == "ratio" else self.margin

    def as_dict(self) -> dict:
        return {"claim": self.claim, "better": self.better, "than": self.than, "metric": self.metric,
                "direction": self.direction, "scale": self.scale, "margin": self.margin, "identity": self.identity,
                "tolerance": self.tolerance, "stage": self.stage}


@dataclass
class Verdict:
    """A claim's verdict, why, the test and effect behind it, and the per-seed numbers it rests on."""

    claim: str
    verdict: str
    rule: str
    evidence: dict
    reason: str = ""
    n: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0
    effect: dict = field(default_factory=dict)
    p_value: Optional[float] = None
    p_adjusted: Optional[float] = None
    summary: str = ""

    def as_dict(self) -> dict:
        return {"claim": self.claim, "verdict": self.verdict, "rule": self.rule, "reason": self.reason, "n": self.n,
                "wins": self.wins, "losses": self.losses, "ties": self.ties, "effect": self.effect,
                "p_value": self.p_value, "p_adjusted": self.p_adjusted, "evidence": self.evidence}

    def line(self) -> str:
        return f"**{self.verdict}** — {self.claim}: {self.reason}"


def _value(summary: Optional[dict], metric: str):
    """A run's value of ``metric``: a number, ``inf`` (target never reached), ``"failed"`` or None (undefined)."""
    if summary is None or summary.get("status") not in ("completed", "diverged"):
        return "failed"
    value = summary.get(metric)
    if metric in _TO_TARGET and value is None:
        return math.inf
    if summary.get("status") == "diverged" and metric not in _TO_TARGET:
        return None  # a diverged run has no final value to compare
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _effect(claim: Claim, a: float, b: float) -> Optional[float]:
    """The effect of one pair, positive when it favours the claim (None: undefined, e.g. κ ≤ 0)."""
    sign = 1.0 if claim.direction == "lower" else -1.0
    if claim.scale == "difference":
        if math.isinf(a) or math.isinf(b):
            return 0.0 if a == b else sign * (math.inf if b > a else -math.inf)
        return sign * (b - a)
    if a <= 0 or b <= 0:
        return None
    if math.isinf(a) or math.isinf(b):  # censored: the sign is known, the size is not
        return 0.0 if a == b else sign * (math.inf if b > a else -math.inf)
    return sign * math.log(b / a)


def _fmt(x: float) -> str:
    return "∞" if x == math.inf else "−∞" if x == -math.inf else f"{x:.3g}"


def judge(claim: Claim, runs: dict, seeds: list, invalid_arms: Optional[dict] = None) -> Verdict:
    """The verdict of ``claim`` on the declared confirmation ``seeds`` before multiplicity adjustment
    (:func:`judge_all` adjusts and settles the state). ``runs``: ``{arm: {seed: summary}}``."""
    better, than = claim.sides
    invalid_arms = invalid_arms or {}
    arms = [better.arm] + ([] if isinstance(than, float) else [than.arm])
    values_a = [_value(runs.get(better.arm, {}).get(s), better.metric) for s in seeds]
    values_b = ([than] * len(seeds) if isinstance(than, float)
                else [_value(runs.get(than.arm, {}).get(s), than.metric) for s in seeds])
    evidence = {"seeds": list(seeds),
                "better": {"side": better.label(), "values": [_jsonable(v) for v in values_a]},
                "than": {"side": "threshold" if isinstance(than, float) else than.label(),
                         "values": [_jsonable(v) for v in values_b]}}
    verdict = Verdict(claim.claim, "invalid", RULE, evidence, n=len(seeds))
    never = [a for a in arms if a in invalid_arms]
    if never:
        verdict.reason = f"arm {never[0]} never trained: {invalid_arms[never[0]]}"
        return verdict
    if not seeds:
        verdict.reason = "no confirmation seeds declared"
        return verdict
    failed = sum(1 for a, b in zip(values_a, values_b) if "failed" in (a, b))
    if failed > 1:
        verdict.reason = f"{failed} of {len(seeds)} declared runs failed or are missing"
        return verdict
    pairs = [(a, b) for a, b in zip(values_a, values_b) if "failed" not in (a, b)]
    effects = [None if a is None or b is None else _effect(claim, a, b) for a, b in pairs]
    undefined = effects.count(None)
    if undefined > 1:
        verdict.reason = (f"{claim.sides[0].metric} is undefined on {undefined} of {len(seeds)} seeds "
                          "(e.g. κ where λmin ≤ 0, or a run that diverged)")
        return verdict
    d = [e for e in effects if e is not None]
    verdict.n = len(d)
    verdict.wins, verdict.losses = sum(e > 0 for e in d), sum(e < 0 for e in d)
    verdict.ties = len(d) - verdict.wins - verdict.losses
    if claim.identity:
        return _judge_identity(claim, verdict, pairs, d)
    censored = any(math.isinf(e) for e in d)
    if censored:
        statistic, p_holds, p_fails = "sign test", sign_test(verdict.wins, verdict.losses), \
            sign_test(verdict.losses, verdict.wins)
    else:
        statistic, p_holds, p_fails = "Wilcoxon signed-rank", signed_rank_test(d), signed_rank_test([-e for e in d])
    estimate, (low, high), coverage = median_interval(d)
    verdict.p_value = min(1.0, 2 * min(p_holds, p_fails))
    # a pair in which neither side reached the target is a tie that measured nothing: it cannot show equivalence
    unreached = sum(1 for a, b in pairs if isinstance(a, float) and isinstance(b, float) and math.isinf(a)
                    and math.isinf(b) and a == b)
    verdict.effect = {"statistic": statistic, "scale": claim.scale,
                      "measure": "median log-ratio than/better" if claim.scale == "ratio" else "median difference",
                      "estimate": _jsonable(estimate), "ci": [_jsonable(low), _jsonable(high)],
                      "coverage": coverage, "margin": claim.margin, "both_unreached": unreached}
    verdict.verdict = "inconclusive"  # settled by judge_all after the multiplicity adjustment
    return verdict


def _judge_identity(claim: Claim, verdict: Verdict, pairs: list, d: list) -> Verdict:
    tol = claim.tolerance or 0.0
    if claim.tolerance is not None:  # |better − than| ≤ tolerance on every seed
        bad = [abs(a - b) for a, b in pairs if a is not None and b is not None and abs(a - b) > tol]
    else:  # the stated inequality on every seed
        bad = [e for e in d if not e > 0]
    verdict.verdict = "fails" if bad else "identity"
    verdict.reason = (f"true by construction; verified on all {len(d)} seeds"
                      + (f" to {tol:g}" if claim.tolerance is not None else "")
                      if not bad else f"an identity violated on {len(bad)} of {len(d)} seeds")
    return verdict


def judge_all(claims: list[Claim], runs: dict, seeds: list, invalid_arms: Optional[dict] = None,
              tuning: Optional[tuple[dict, list]] = None) -> list[Verdict]:
    """Every claim of one experiment: tested, Holm-adjusted over the empirical ones, and settled.
    ``tuning``: ``(runs, seeds)`` of per-tuning-seed grid values, for claims with ``stage: tuning``."""
    def context(claim: Claim) -> tuple[dict, list]:
        return tuning if claim.stage == "tuning" and tuning is not None else (
            ({}, []) if claim.stage == "tuning" else (runs, seeds))

    verdicts = [judge(c, *context(c), invalid_arms) for c in claims]
    tested = [i for i, v in enumerate(verdicts) if v.p_value is not None]
    for i, p in zip(tested, holm([verdicts[i].p_value for i in tested])):
        verdicts[i].p_adjusted = p
        _settle(claims[i], verdicts[i])
    return verdicts


def _settle(claim: Claim, v: Verdict) -> None:
    m = claim.log_margin
    low = _number(v.effect["ci"][0], -math.inf)
    high = _number(v.effect["ci"][1], math.inf)
    estimate = _number(v.effect["estimate"], 0.0)
    shown = (f"median effect {_shown(claim, estimate)} [{_shown(claim, low)}, {_shown(claim, high)}], margin "
             f"{claim.margin:g}; {v.wins} for, {v.losses} against, {v.ties} tied of {v.n}; {v.effect['statistic']} "
             f"p = {v.p_value:.3g}, Holm {v.p_adjusted:.3g}")
    significant = v.p_adjusted < ALPHA
    if significant and estimate > m:
        v.verdict, why = "holds", "significant and beyond the margin"
    elif significant and estimate < -m:
        v.verdict, why = "fails", "significant, and beyond the margin against the claim"
    elif m > 0 and -m < low and high < m and not v.effect.get("both_unreached"):
        v.verdict, why = "equivalent", "the interval lies inside ± the margin"
    elif m > 0 and -m < low and high < m:
        v.verdict, why = "inconclusive", (f"neither side reached the target on {v.effect['both_unreached']} of {v.n} "
                                          "seeds: a tie that measured nothing, not an equivalence")
    elif significant:
        v.verdict, why = "inconclusive", "significant, but the effect is within the margin"
    else:
        v.verdict, why = "inconclusive", "not significant"
    v.reason = f"{why}: {shown}"


def _shown(claim: Claim, x: float) -> str:
    """An effect on the scale people read: the ratio than/better, or the difference."""
    if claim.scale == "ratio":
        return "∞" if x == math.inf else "0" if x == -math.inf else f"×{math.exp(x):.3g}"
    return _fmt(x)


def _number(x, default: float) -> float:
    if x is None:
        return default
    if isinstance(x, str):
        return math.inf if x == "inf" else -math.inf
    return float(x)


def _jsonable(x):
    """JSON has no infinity: ±∞ (a side that never reached the target) is written as "inf"/"-inf"."""
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def count_states(verdicts: list) -> dict:
    """How many verdicts are in each state (``identity`` kept apart from empirical support)."""
    states = [v["verdict"] if isinstance(v, dict) else v.verdict for v in verdicts]
    return {s: states.count(s) for s in STATES}
