"""Claims of the theory as data, and the stated statistical rule that turns runs into a verdict.

A claim compares one summary value of two sides, paired by confirmation seed::

    {"claim": "adam reaches the target in fewer steps than tuned sgd", "role": "primary",
     "metric": "steps_to_target", "better": "adam", "than": "sgd", "direction": "lower"}

A side is an arm name (with the claim's ``metric``) or ``{"arm": ..., "metric": ...}``; ``than`` may
also be a number (a threshold). :data:`RULE` is the rule every verdict states:

* **Effect per seed** θᵢ, oriented so that a positive value favours the claim: the log-ratio of the two
  sides for positive quantities (steps, seconds, κ, λmax: ``scale: ratio``), their difference otherwise
  (accuracies, sparsity: ``scale: difference``).
* **Censored pairs.** A side that never reached its target within its budget ``B`` (its steps, or its
  training seconds) has a time in ``(B, ∞)``; the pair's effect is then only known to lie in an interval
  ``[θᵢ⁻, θᵢ⁺]`` (e.g. ``θ ≥ log(B/t)`` when only the other side reached it, at ``t``). Every test and
  interval below is computed twice, on the lower ends for "holds" and on the upper ends for "fails", so a
  censored pair only ever counts against the conclusion drawn; the estimate is then a bound (``≥ ×6``).
* **Test and interval, paired** (``test:`` per claim): ``sign`` (default, no assumption on the shape of the
  effects) — the exact sign test with the median and its order-statistic interval; ``signed_rank`` — the
  exact Wilcoxon signed-rank test with the Hodges–Lehmann estimate and its Walsh-average interval (assumes
  the effects are symmetric about their centre). The interval is the set of centres the same test does not
  reject at two-sided level 5 %.
* **Margin** m of practical relevance per claim: default a ratio of 1.25 for steps, seconds and κ, 0.5
  points (0.005) for accuracies, 0 otherwise. A superiority claim (``kind: superiority``, default) tests
  ``H₀: θ ≤ m`` (holds) and ``H₀: θ ≥ −m`` (fails); a non-inferiority claim (``kind: noninferiority``,
  phrased "at least as …") tests ``H₀: θ ≤ −m`` (noninferior) and ``H₀: θ ≥ −m`` (fails). The p-value is
  twice the smaller one-sided one.
* **Families** (``role:`` per claim): ``primary`` (a prediction of the theory), ``control`` (a check that the
  setup measures what it should) and ``exploratory``. Holm's step-down adjustment runs within each family
  of one experiment; identities are in none. A family whose smallest attainable adjusted p (its size × the
  smallest exact p, ``2¹⁻ⁿ`` on n seeds) exceeds 0.05 is refused before any run.
* **Selection per claim** (``selection:``): a claim reads each arm at the point chosen for speed (``speed``, the
  experiment's rule) or, for claims on final values, at the point with the best median final target metric over
  ≥ 5 tuning seeds (``final``); the arm is then confirmed at both points.
* **Floors**: a claim may name the value at which its measurement stops resolving (``floor:``, e.g. κ⁺ at the
  eigenvalue cut); a comparison with either side there on more than one seed is ``invalid`` ("floor").
* **States**: ``holds`` / ``noninferior`` — Holm-adjusted p < 0.05 in the claim's direction and the whole
  interval beyond the boundary (``> m``, resp. ``> −m``); ``fails`` — the mirror image (interval ``< −m``);
  ``equivalent`` — a superiority claim whose interval lies inside ±m ("the advantage is gone"; unadjusted),
  with no pair of two sides that both never reached the target (that tie measured nothing); ``inconclusive``
  — none of these; ``invalid`` — an arm never trained (no eligible grid point), more than one declared run
  failed or is missing, or the metric is undefined on more than one seed; ``identity`` — a claim true by
  construction (``identity: true``), verified on every seed to its ``tolerance``, and kept out of the count
  of empirical support (a violated identity ``fails``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from precond.errors import ConfigError
from precond.settings import Choice, Flag, Num, is_number
from precond.sweep.stats import holm, median_interval, sign_test, signed_rank_test, smallest_p, walsh_interval

ALPHA = 0.05
RULE = ("per seed the log-ratio (steps, seconds, κ) or difference (accuracies) of the two sides, oriented to favour "
        "the claim; a side that never reached its target counts at the bound its budget sets, against the conclusion "
        "drawn; sign test with the median and its order-statistic interval, or (test: signed_rank) Wilcoxon with the "
        "Hodges–Lehmann estimate and its Walsh-average interval; each tests the effect against the margin "
        "(H₀: θ ≤ m for holds, θ ≥ −m for fails; θ ≤ −m for noninferior), p two-sided, Holm-adjusted within the "
        "experiment's primary, control and exploratory claims apart; holds/noninferior/fails when adjusted p < 0.05 "
        "and the whole 95 % interval lies beyond the margin, equivalent when it lies inside ±margin (and no pair is "
        "two never-reached sides); invalid when an arm never trained, more than one run failed or the metric is "
        "undefined on more than one seed")
STATES = ("holds", "noninferior", "fails", "equivalent", "inconclusive", "invalid", "identity")
#: a claim's family for the multiplicity adjustment: a prediction of the theory, a check of the setup, or neither
ROLES = ("primary", "control", "exploratory")
#: what a claim asserts: an advantage beyond the margin, or no disadvantage beyond it ("at least as fast")
KINDS = ("superiority", "noninferiority")
#: the paired test and its estimator/interval: sign test ↔ median, Wilcoxon signed-rank ↔ Hodges–Lehmann
TESTS = ("sign", "signed_rank")
#: where a claim's arms are read: at the point chosen for speed (the experiment's rule) or for the final value
SELECTIONS = ("speed", "final")
#: the suffix of an arm read at its final-value choice (``adam@final``)
FINAL = "@final"
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
    role: str = "primary"
    kind: str = "superiority"
    test: str = "sign"
    floor: Optional[float] = None
    selection: str = "speed"

    def __post_init__(self) -> None:
        if not isinstance(self.claim, str) or not self.claim:
            raise ConfigError("claim", "a sentence stating the claim", self.claim)
        self.role = Choice(ROLES).check("role", self.role, "primary: a prediction of the theory; control: a check "
                                        "of the setup; exploratory: neither (each is its own Holm family)")
        self.kind = Choice(KINDS).check("kind", self.kind, "noninferiority for claims phrased 'at least as …'")
        self.test = Choice(TESTS).check("test", self.test, "sign (median; no assumption) or signed_rank "
                                        "(Hodges–Lehmann; effects symmetric about their centre)")
        self.stage = Choice(STAGES).check("stage", self.stage, "tuning: judged on grid/* metrics over the tuning seeds")
        self.direction = Choice(DIRECTIONS).check("direction", self.direction, "which values are better")
        self.identity = Flag().check("identity", self.identity)
        self.sides = (self._side("better", self.better), self._side("than", self.than))
        self.scale = Choice(SCALES, optional=True).check("scale", self.scale) or default_scale(self.sides[0].metric)
        self.tolerance = Num(0, optional=True).check("tolerance", self.tolerance)
        self.selection = Choice(SELECTIONS).check(
            "selection", self.selection, "speed: each arm at the point chosen by time to target (the experiment's "
            "rule); final: at the point with the best median final target metric (for claims on final values)")
        if self.selection == "final" and self.stage == "tuning":
            raise ConfigError("selection", "speed for a claim with stage: tuning (it reads the whole grid, no chosen "
                              "point)", self.selection)
        self.floor = Num(0, optional=True).check("floor", self.floor, "the value at which the measurement stops "
                                                 "resolving (κ⁺ at the eigenvalue cut: 0.5/cut), or null")
        if self.margin is None:
            metric = self.sides[0].metric
            self.margin = _DEFAULT_RATIO_MARGIN if self.scale == "ratio" else (
                _DEFAULT_ACC_MARGIN if "acc" in metric else 0.0)
        self.margin = Num(1 if self.scale == "ratio" else 0).check(
            "margin", self.margin, "a ratio >= 1 on the ratio scale, a difference >= 0 otherwise")

    def _side(self, key: str, value):
        if key == "than" and is_number(value):
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
                "tolerance": self.tolerance, "stage": self.stage, "role": self.role, "kind": self.kind,
                "test": self.test, "floor": self.floor, "selection": self.selection}

    def arms(self) -> list[str]:
        """The arms the claim reads, as keys of the runs (``adam@final`` with ``selection: final``)."""
        return [self.key(side) for side in self.sides if isinstance(side, Side)]

    def key(self, side: Side) -> str:
        """Where a side's runs are: its arm at the point chosen by the claim's selection rule."""
        return side.arm + (FINAL if self.selection == "final" else "")

    @property
    def boundaries(self) -> tuple[float, float]:
        """``(c_holds, c_fails)`` on the effect's scale: "holds" rejects ``θ ≤ c_holds``, "fails" rejects
        ``θ ≥ c_fails`` (superiority: ``m, −m``; non-inferiority: ``−m, −m``)."""
        m = self.log_margin
        return (m, -m) if self.kind == "superiority" else (-m, -m)


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


@dataclass(frozen=True)
class Measured:
    """One run's value of a metric as an interval ``[low, high]``: equal ends when measured, ``[budget, ∞]`` when
    the run never reached its target within its budget (steps or training seconds; 0 when unknown)."""

    low: float
    high: float

    @property
    def censored(self) -> bool:
        return self.low != self.high

    def jsonable(self):
        """The value, or ``{"not_reached_within": budget}`` for a target never reached."""
        return _jsonable(self.low) if not self.censored else {"not_reached_within": self.low}


def _budget(summary: dict, metric: str) -> float:
    """How far a run could have gone on ``metric``: its steps (after a warm-up where the metric says so) or
    its training seconds; 0 when the summary does not say (the weakest bound)."""
    if metric.startswith("seconds"):
        value = summary.get("time/train_s")
    else:
        value = summary.get("steps")
        if metric.endswith("_after_warmup") and is_number(value):
            value = value - (summary.get("warmup_steps") or 0)
    return float(value) if is_number(value) and value > 0 else 0.0


def _value(summary: Optional[dict], metric: str):
    """A run's value of ``metric``: a :class:`Measured`, ``"failed"`` or None (undefined)."""
    if summary is None or summary.get("status") not in ("completed", "diverged"):
        return "failed"
    value = summary.get(metric)
    if metric in _TO_TARGET and value is None:
        return Measured(_budget(summary, metric), math.inf)
    if summary.get("status") == "diverged" and metric not in _TO_TARGET:
        return None  # a diverged run has no final value to compare
    if is_number(value):
        return Measured(float(value), float(value))
    return None


def _bounds(claim: Claim, a: Measured, b: Measured) -> Optional[tuple[float, float]]:
    """The effect of one pair as ``(θ⁻, θ⁺)``, positive favouring the claim; None when undefined (κ ≤ 0)."""
    if claim.scale == "ratio":
        if a.low < 0 or b.low < 0 or (a.low == 0 and not a.censored) or (b.low == 0 and not b.censored):
            return None

        def f(x: float) -> float:
            return -math.inf if x == 0 else math.log(x)
    else:
        def f(x: float) -> float:
            return x
    if claim.direction == "lower":  # θ = f(b) − f(a)
        low, high = f(b.low) - f(a.high), f(b.high) - f(a.low)
    else:  # θ = f(a) − f(b)
        low, high = f(a.low) - f(b.high), f(a.high) - f(b.low)
    if math.isnan(low) or math.isnan(high):
        return None
    return low, high


def invalid_arms(selection: dict) -> dict:
    """Run key → why it never trained, from a selection.json: an arm with no eligible point (``adam``), or with no
    point for the final-value rule (``adam@final``)."""
    out = {}
    for arm, entry in selection["arms"].items():
        if entry.get("invalid"):
            out[arm] = entry["invalid"]
        if entry.get("invalid_final"):
            out[arm + FINAL] = entry["invalid_final"]
    return out


def _fmt(x: float) -> str:
    return "∞" if x == math.inf else "−∞" if x == -math.inf else f"{x:.3g}"


def judge(claim: Claim, runs: dict, seeds: list, invalid_arms: Optional[dict] = None, alpha: float = ALPHA) -> Verdict:
    """The verdict of ``claim`` on the declared confirmation ``seeds`` before multiplicity adjustment
    (:func:`judge_all` adjusts and settles the state), its interval at level ``1 − alpha``. ``runs``:
    ``{arm: {seed: summary}}``."""
    better, than = claim.sides
    invalid_arms = invalid_arms or {}
    arms = claim.arms()
    values_a = [_value(runs.get(claim.key(better), {}).get(s), better.metric) for s in seeds]
    values_b = ([Measured(than, than)] * len(seeds) if isinstance(than, float)
                else [_value(runs.get(claim.key(than), {}).get(s), than.metric) for s in seeds])
    evidence = {"seeds": list(seeds),
                "better": {"side": better.label(), "values": [_shown_value(v) for v in values_a]},
                "than": {"side": "threshold" if isinstance(than, float) else than.label(),
                         "values": [_shown_value(v) for v in values_b]}}
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
    at_floor = _at_floor(claim, pairs)
    if at_floor > 1:
        verdict.reason = (f"floor: a side sits at the measurement's cut ({claim.floor:g}) on {at_floor} of "
                          f"{len(seeds)} seeds, so the comparison measures the cut, not the quantity")
        return verdict
    bounds = [None if a is None or b is None else _bounds(claim, a, b) for a, b in pairs]
    undefined = bounds.count(None)
    if undefined > 1:
        verdict.reason = (f"{claim.sides[0].metric} is undefined on {undefined} of {len(seeds)} seeds "
                          "(e.g. κ where λmin ≤ 0, or a run that diverged)")
        return verdict
    kept = [(p, e) for p, e in zip(pairs, bounds) if e is not None]
    lows, highs = [e[0] for _, e in kept], [e[1] for _, e in kept]
    verdict.n = len(kept)
    verdict.wins = sum(lo > 0 for lo in lows)
    verdict.losses = sum(hi < 0 for hi in highs)
    verdict.ties = verdict.n - verdict.wins - verdict.losses
    if claim.identity:
        return _judge_identity(claim, verdict, [p for p, _ in kept], lows)
    c_holds, c_fails = claim.boundaries
    p_holds = _one_sided(claim.test, [lo - c_holds for lo in lows])
    p_fails = _one_sided(claim.test, [c_fails - hi for hi in highs])
    verdict.p_value = min(1.0, 2 * min(p_holds, p_fails))
    estimate_low, (low, _), coverage = _interval(claim.test, lows, alpha)
    estimate_high, (_, high), _ = _interval(claim.test, highs, alpha)
    # a pair in which neither side reached the target is a tie that measured nothing: it cannot show equivalence
    unreached = sum(1 for a, b in [p for p, _ in kept] if a.censored and b.censored)
    verdict.effect = {"statistic": "sign test" if claim.test == "sign" else "Wilcoxon signed-rank",
                      "estimator": "median" if claim.test == "sign" else "Hodges–Lehmann",
                      "scale": claim.scale, "kind": claim.kind, "role": claim.role,
                      "measure": ("log-ratio than/better" if claim.scale == "ratio" else "difference"),
                      "estimate": [_jsonable(estimate_low), _jsonable(estimate_high)],
                      "ci": [_jsonable(low), _jsonable(high)], "coverage": coverage, "margin": claim.margin,
                      "direction": "holds" if p_holds <= p_fails else "fails",
                      "censored": sum(1 for lo, hi in zip(lows, highs) if lo != hi), "both_unreached": unreached}
    verdict.verdict = "inconclusive"  # settled by judge_all after the multiplicity adjustment
    return verdict


def _at_floor(claim: Claim, pairs: list) -> int:
    """On how many seeds either side's measured value is at or beyond the claim's ``floor``."""
    if claim.floor is None:
        return 0
    return sum(1 for a, b in pairs if any(isinstance(v, Measured) and not v.censored and v.low >= claim.floor
                                          for v in (a, b)))


def _one_sided(test: str, shifted: list[float]) -> float:
    """The one-sided p of "the centre of ``shifted`` is above 0" by the claim's test (zeros dropped)."""
    if test == "sign":
        return sign_test(sum(x > 0 for x in shifted), sum(x < 0 for x in shifted))
    return signed_rank_test(shifted)


def _interval(test: str, values: list[float], alpha: float) -> tuple[float, tuple[float, float], float]:
    return median_interval(values, alpha) if test == "sign" else walsh_interval(values, alpha)


def _shown_value(v):
    """A per-seed value for the evidence: a number, "inf" (never reached), "failed" or None."""
    return v.jsonable() if isinstance(v, Measured) else v


def _judge_identity(claim: Claim, verdict: Verdict, pairs: list, lows: list) -> Verdict:
    tol = claim.tolerance or 0.0
    if claim.tolerance is not None:  # |better − than| ≤ tolerance on every seed (measured values only)
        bad = [1 for a, b in pairs if a.censored or b.censored or abs(a.low - b.low) > tol]
    else:  # the stated inequality on every seed, at the bound least favourable to it
        bad = [e for e in lows if not e > 0]
    verdict.verdict = "fails" if bad else "identity"
    verdict.reason = (f"true by construction; verified on all {len(lows)} seeds"
                      + (f" to {tol:g}" if claim.tolerance is not None else "")
                      if not bad else f"an identity violated on {len(bad)} of {len(lows)} seeds")
    return verdict


def family_bounds(claims: list[Claim], n_confirmation: int, n_tuning: int, looks: int = 1) -> dict:
    """Per role: ``(size, smallest attainable adjusted p)`` at the first look. A claim's p is at least ``2 · 2⁻ⁿ``
    (every seed on one side; two-sided), Holm multiplies the smallest p of a family of k by k, and ``looks``
    staged looks multiply it by their number (Bonferroni over looks)."""
    out = {}
    for role in ROLES:
        members = [c for c in claims if c.role == role and not c.identity]
        if members:
            fewest = min(n_tuning if c.stage == "tuning" else n_confirmation for c in members)
            out[role] = (len(members), min(1.0, looks * len(members) * 2 * smallest_p(fewest)))
    return out


def families_text(claims: list[Claim], n_confirmation: int, n_tuning: int, looks: int = 1) -> str:
    """One sentence: each family's size and the smallest adjusted p it can reach on its (first look's) seeds."""
    parts = [f"{role}: {size} claim{'s' if size > 1 else ''}, smallest attainable adjusted p {bound:.2g}"
             for role, (size, bound) in family_bounds(claims, n_confirmation, n_tuning, looks).items()]
    return "Holm families — " + "; ".join(parts) if parts else "No tested claims (identities only)"


def seeds_needed(family_size: int, looks: int = 1) -> int:
    """The fewest seeds on which a family of ``family_size`` claims can reach adjusted p < 0.05."""
    n = 1
    while looks * family_size * 2 * smallest_p(n) >= ALPHA:
        n += 1
    return n


def check_families(claims: list[Claim], n_confirmation: int, n_tuning: int, looks: int = 1) -> None:
    """Refuse (before any run) a family that could not reach significance even if every seed agreed
    (``n_confirmation``: the seeds of the first look)."""
    for role, (size, bound) in family_bounds(claims, n_confirmation, n_tuning, looks).items():
        if bound >= ALPHA:
            stage = "tuning" if any(c.role == role and c.stage == "tuning" and not c.identity for c in claims) \
                and n_tuning < n_confirmation else "confirmation"
            raise ConfigError(f"{stage}_seeds", f"enough seeds for the {size} {role} claims to reach adjusted "
                              f"p < {ALPHA:g} (the smallest attainable is {bound:.3g})",
                              n_tuning if stage == "tuning" else n_confirmation,
                              f"use at least {seeds_needed(size, looks)} {stage} seeds"
                              + (" in the first stage" if looks > 1 and stage == "confirmation" else "")
                              + f", or fewer {role} claims")


def judge_all(claims: list[Claim], runs: dict, seeds: list, invalid_arms: Optional[dict] = None,
              tuning: Optional[tuple[dict, list]] = None, looks: int = 1,
              family_sizes: Optional[dict] = None, settled: frozenset = frozenset()) -> list[Verdict]:
    """Every claim of one experiment: tested, Holm-adjusted within each role's family, and settled.
    ``tuning``: ``(runs, seeds)`` of per-tuning-seed grid values, for claims with ``stage: tuning``. One look of
    ``looks`` (staged confirmation): each look spends ``α/looks`` — adjusted p are multiplied by ``looks`` and
    intervals are at ``1 − α/looks``. ``family_sizes`` (role → m) keeps a family's size fixed across looks: claims
    already ``settled`` at an earlier look (indices) count in Holm with p = 1 (conservative)."""
    def context(claim: Claim) -> tuple[dict, list]:
        return tuning if claim.stage == "tuning" and tuning is not None else (
            ({}, []) if claim.stage == "tuning" else (runs, seeds))

    verdicts = [judge(c, *context(c), invalid_arms, alpha=ALPHA / looks) for c in claims]
    for role in ROLES:
        tested = [i for i, v in enumerate(verdicts)
                  if v.p_value is not None and claims[i].role == role and i not in settled]
        size = max(len(tested), (family_sizes or {}).get(role, 0))
        padded = [verdicts[i].p_value for i in tested] + [1.0] * (size - len(tested))
        for i, p in zip(tested, holm(padded)):
            verdicts[i].p_adjusted = min(1.0, looks * p)
            verdicts[i].effect["family"] = f"{role} ({size})"
            verdicts[i].effect["family_size"] = size
            _settle(claims[i], verdicts[i])
    return verdicts


#: the states that end a claim's staged confirmation; an inconclusive claim gets the next stage's seeds
DECIDED = ("holds", "noninferior", "fails", "equivalent", "invalid", "identity")


def judge_staged(claims: list[Claim], runs: dict, seeds: list, stages: Optional[list] = None,
                 invalid_arms: Optional[dict] = None, tuning: Optional[tuple[dict, list]] = None) -> list[Verdict]:
    """Every claim judged by staged confirmation: at look k on the first ``stages[k]`` of ``seeds`` (each look
    spends α/K, :func:`judge_all`); a claim keeps the verdict of the first look that decides it, an open claim
    (``inconclusive``) goes on to the next look if its estimate lies beyond a boundary (:func:`promising`) and its
    arms have that look's runs, and the last look is final. Every role is staged alike, so a fresh draw of seeds
    gives every claim the same chance to decide. Stopping an open claim early for futility never raises the error
    rate (each look spends its own α/K whether or not a later look happens)."""
    stages = list(stages or [len(seeds)])
    return _settle_looks(claims, runs, seeds, stages, len(stages), invalid_arms, tuning)  # type: ignore[return-value]


def arms_to_extend(claims: list[Claim], runs: dict, seeds: list, stages: list, look: int,
                   invalid_arms: Optional[dict] = None, tuning: Optional[tuple[dict, list]] = None) -> list[str]:
    """The arms (run keys: ``adam``, ``adam@final``) whose runs on the seeds of look ``look + 1`` the claims still
    open after look ``look`` need."""
    final = _settle_looks(claims, runs, seeds, stages, look + 1, invalid_arms, tuning)
    arms: list[str] = []
    for claim, verdict in zip(claims, final):
        if verdict is None:
            arms += [key for key in claim.arms() if key not in arms]
    return arms


def _settle_looks(claims, runs, seeds, stages, upto, invalid_arms, tuning) -> list[Optional[Verdict]]:
    """The verdicts settled by looks ``0 .. upto − 1`` of ``stages`` (None: still open after them; a claim is open
    only while a later look exists and, where that look has been run, its arms have its runs)."""
    looks = len(stages)
    final: list[Optional[Verdict]] = [None] * len(claims)
    sizes: dict = {}
    for k in range(upto):
        n = stages[k]
        settled = frozenset(i for i, v in enumerate(final) if v is not None)
        verdicts = judge_all(claims, runs, seeds[:n], invalid_arms, tuning, looks=looks, family_sizes=sizes,
                             settled=settled)
        if k == 0:  # the families as the first look tests them: their size stays fixed over the looks
            sizes = {role: sum(1 for c, v in zip(claims, verdicts) if c.role == role and v.p_value is not None)
                     for role in ROLES}
        for i, v in enumerate(verdicts):
            if final[i] is not None:
                continue
            last = k + 1 == looks
            ahead = k + 1 == upto  # the next look has not been run yet: an open claim waits for it
            staged = not last and claims[i].stage == "confirmation"
            futile = staged and v.verdict == "inconclusive" and not promising(claims[i], v)
            more = staged and not futile and (ahead or _has_runs(claims[i], runs, seeds[:stages[k + 1]]))
            if v.verdict in DECIDED or not more:
                if looks > 1:
                    if v.effect:
                        v.effect["look"] = [k + 1, looks, n]
                    v.reason += f"; decided at look {k + 1} of {looks} on {n} seeds (α/{looks} each)"
                    if futile:
                        v.effect["futile"] = True
                        v.reason += ", stopped for futility: the estimate lies inside the margin"
                final[i] = v
    return final


def promising(claim: Claim, v: Verdict) -> bool:
    """Whether more seeds could decide an open claim: its estimate lies beyond a boundary (above ``c_holds`` or
    below ``c_fails``, :attr:`Claim.boundaries`), so only the interval's width keeps it open. A claim whose
    estimate lies inside the margin would need its estimate to move, not its interval to narrow: it stops (a
    non-binding futility rule, which spends no α). A censored estimate counts at its most favourable end."""
    estimate = (v.effect or {}).get("estimate")
    if estimate is None:
        return False
    low, high = (estimate if isinstance(estimate, (list, tuple)) else (estimate, estimate))
    c_holds, c_fails = claim.boundaries
    return _number(high, math.inf) > c_holds or _number(low, -math.inf) < c_fails


def _has_runs(claim: Claim, runs: dict, seeds: list) -> bool:
    """Whether every arm of ``claim`` has a run (of any status) for each of ``seeds``."""
    return all(seed in runs.get(key, {}) for key in claim.arms() for seed in seeds)


def _settle(claim: Claim, v: Verdict) -> None:
    m = claim.log_margin
    low = _number(v.effect["ci"][0], -math.inf)
    high = _number(v.effect["ci"][1], math.inf)
    c_holds, c_fails = claim.boundaries
    shown = (f"{v.effect['estimator']} effect {estimate_text(claim.scale, v.effect['estimate'])} "
             f"[{_shown(claim, low)}, {_shown(claim, high)}], margin {claim.margin:g}; {v.wins} for, {v.losses} "
             f"against, {v.ties} tied or undetermined of {v.n}; {v.effect['statistic']} p = {v.p_value:.3g}, Holm "
             f"{v.p_adjusted:.3g} among the {v.effect['family']} claims")
    significant = v.p_adjusted < ALPHA
    positive = "holds" if claim.kind == "superiority" else "noninferior"
    boundary = "the margin" if claim.kind == "superiority" else "−margin"
    if significant and v.effect["direction"] == "holds" and low > c_holds:
        v.verdict, why = positive, f"significant, and the whole interval lies beyond {boundary}"
    elif significant and v.effect["direction"] == "fails" and high < c_fails:
        v.verdict, why = "fails", "significant, and the whole interval lies beyond −margin, against the claim"
    elif claim.kind == "superiority" and m > 0 and -m < low and high < m and not v.effect.get("both_unreached"):
        v.verdict, why = "equivalent", "the interval lies inside ± the margin"
    elif claim.kind == "superiority" and m > 0 and -m < low and high < m:
        v.verdict, why = "inconclusive", (f"neither side reached the target on {v.effect['both_unreached']} of {v.n} "
                                          "seeds: a tie that measured nothing, not an equivalence")
    elif significant:
        v.verdict, why = "inconclusive", "significant, but the interval reaches across the boundary"
    else:
        v.verdict, why = "inconclusive", "not significant after Holm"
    v.reason = f"{why}: {shown}"


def estimate_text(scale: str, estimate) -> str:
    """An estimate that may be a bound (censored pairs): ``×2.1``, ``≥ ×6``, ``≤ ×0.5`` or ``×1.2…×3``."""
    if not isinstance(estimate, list):
        estimate = [estimate, estimate]
    low, high = _number(estimate[0], -math.inf), _number(estimate[1], math.inf)

    def one(x: float) -> str:
        if scale == "ratio":
            return "∞" if x == math.inf else "0" if x == -math.inf else f"×{math.exp(x):.3g}"
        return "∞" if x == math.inf else "−∞" if x == -math.inf else f"{x + 0.0:+.3g}"

    if low == high:
        return one(low)
    if high == math.inf:
        return f"≥ {one(low)}"
    if low == -math.inf:
        return f"≤ {one(high)}"
    return f"{one(low)}…{one(high)}"


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
