"""Recompute every committed verdict from its stored per-seed values with an independent implementation.

precond's verdicts come from :mod:`precond.sweep.verdicts` (hand-written exact tests, order statistics and
Walsh averages). This script shares none of that code: it reads each verdict's per-seed values from
``docs/results/*/verdicts.json`` and the claim's fields from the stored claims, and decides again with
``scipy.stats`` (``binomtest`` for the sign test, ``wilcoxon`` for the signed-rank test), intervals found by
inverting those scipy tests numerically, and its own Holm step-down. A claim left inconclusive before the last
look must have stopped for futility (its estimate, the median of its per-seed effects or of their Walsh
averages, inside the margin) or lacked the next look's seeds. It prints a table of disagreements and
the agreement rate, and exits 1 on any disagreement in state.

    python scripts/recheck_verdicts.py [docs/results]
"""
from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ALPHA = 0.05
ROOT = Path(__file__).resolve().parent.parent
TO_TARGET_SCALE_DEFAULT = {"ratio": 1.25}


def claims_of(directory: Path) -> tuple[list[dict], list[int]]:
    """The claims as stored beside the verdicts (a tuned experiment's selection.json, a check's evidence) and the
    seed counts of the confirmation's looks."""
    selection = directory / "selection.json"
    if selection.exists():
        stored = json.loads(selection.read_text(encoding="utf-8"))
        return stored.get("claims", []), stored.get("stages") or [len(stored.get("confirmation_seeds", []))]
    evidence = directory / "evidence.json.gz"
    if evidence.exists():
        with gzip.open(evidence, "rb") as f:
            stored = json.loads(f.read().decode("utf-8"))
        return stored.get("claims", []), [len(stored.get("seeds", []))]
    return [], []


def interval_of(value) -> tuple[float, float] | None:
    """A per-seed value as the interval it is known to lie in; None when undefined or failed."""
    if isinstance(value, dict) and "not_reached_within" in value:
        return float(value["not_reached_within"]), math.inf
    if value == "inf":
        return 0.0, math.inf
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value)
    return None


def pair_bounds(claim: dict, a, b) -> tuple[float, float] | None:
    """Bounds of the oriented effect: positive favours the claim; log-ratio or difference."""
    ia, ib = interval_of(a), interval_of(b)
    if ia is None or ib is None:
        return None
    if claim["scale"] == "ratio":
        if min(ia[0], ib[0]) < 0 or (ia[0] == 0 == ia[1]) or (ib[0] == 0 == ib[1]):
            return None
        ia = tuple(-math.inf if x == 0 else math.log(x) for x in ia)
        ib = tuple(-math.inf if x == 0 else math.log(x) for x in ib)
    if claim["direction"] == "lower":
        return ib[0] - ia[1], ib[1] - ia[0]
    return ia[0] - ib[1], ia[1] - ib[0]


def p_greater(test: str, x: list[float]) -> float:
    """scipy's one-sided p that the centre of ``x`` is above 0 (zeros dropped)."""
    x = [v for v in x if v != 0]
    if not x:
        return 1.0
    if test == "sign":
        return stats.binomtest(sum(v > 0 for v in x), len(x), 0.5, alternative="greater").pvalue
    finite = [v if math.isfinite(v) else math.copysign(1e300, v) for v in x]
    return stats.wilcoxon(finite, alternative="greater", method="exact").pvalue


def lower_bound(test: str, x: list[float], alpha: float) -> float:
    """inf{θ : the test of "centre > θ" does not reject at alpha/2}: scanned over the points where p can change."""
    finite = sorted(v for v in x if math.isfinite(v))
    if test == "sign":
        candidates = finite
    else:
        candidates = sorted({(u + v) / 2 for i, u in enumerate(finite) for v in finite[i:]})
    if not candidates:
        return -math.inf
    below = candidates[0] - 1.0 - abs(candidates[0])
    if p_greater(test, [v - below for v in x]) > alpha / 2:
        return -math.inf
    for c in candidates:
        eps = 1e-9 * max(1.0, abs(c))
        if p_greater(test, [v - (c + eps) for v in x]) > alpha / 2:
            return c
    return math.inf


def holm(p: list[float]) -> list[float]:
    order = sorted(range(len(p)), key=p.__getitem__)
    out, running = [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        out[i] = running
    return out


def effects_of(claim: dict, v: dict, n: int) -> list[tuple[float, float]]:
    """The per-pair effect bounds of the first ``n`` stored seeds of a verdict."""
    values = list(zip(v["evidence"]["better"]["values"], v["evidence"]["than"]["values"]))[:n]
    return [b for b in (pair_bounds(claim, a, t) for a, t in values if "failed" not in (a, t)) if b]


def test_of(claim: dict, bounds: list, looks: int) -> tuple[float, bool, float, float]:
    """(two-sided p, toward holds, interval low, interval high) at level 1 − α/looks."""
    m = math.log(claim["margin"]) if claim["scale"] == "ratio" else claim["margin"]
    c_holds, c_fails = (m, -m) if claim.get("kind", "superiority") == "superiority" else (-m, -m)
    test = claim.get("test", "sign")
    lows, highs = [b[0] for b in bounds], [b[1] for b in bounds]
    p_h = p_greater(test, [x - c_holds for x in lows])
    p_f = p_greater(test, [c_fails - x for x in highs])
    level = ALPHA / looks
    return (min(1.0, 2 * min(p_h, p_f)), p_h <= p_f, lower_bound(test, lows, level),
            -lower_bound(test, [-x for x in highs], level))


def recheck(claims: list[dict], verdicts: list[dict], stages: list[int]) -> list[tuple]:
    """``[(claim, stored state, rechecked state, stored adjusted p, rechecked adjusted p)]`` of every verdict that
    has a test. Staged looks: look k judges the first ``stages[k]`` seeds; a family keeps its first-look size
    (claims decided earlier count with p = 1); each look spends α/K."""
    looks = len(stages)
    tested = [(c, v) for c, v in zip(claims, verdicts)
              if not c.get("identity") and v["verdict"] != "invalid" and v.get("p_value") is not None]
    out = []
    for role in ("primary", "control", "exploratory"):
        family = [(c, v, (v["effect"].get("look") or [1, 1, None])[0]) for c, v in tested
                  if c.get("role", "primary") == role]
        if not family:
            continue
        size = max(v["effect"].get("family_size", len(family)) for _, v, _ in family)
        for k in range(1, looks + 1):
            members = [(c, v, at) for c, v, at in family if at >= k]
            n = stages[k - 1]
            results = [test_of(c, effects_of(c, v, n), looks) for c, v, _ in members]
            adjusted = holm([r[0] for r in results] + [1.0] * (size - len(results)))
            for (claim, v, at), (_, toward, low, high), adj in zip(members, results, adjusted):
                if at != k:
                    continue
                adj = min(1.0, looks * adj)
                state = state_of(claim, adj, toward, low, high, effects_of(claim, v, n))
                if state == "inconclusive" and k < looks and _has_seeds(v, stages[k]) \
                        and not _stops_for_futility(claim, effects_of(claim, v, n)):
                    state = f"open at look {k} (estimate beyond the margin, next look's seeds stored)"
                out.append((claim["claim"], v["verdict"], state, v.get("p_adjusted"), adj))
    return out


def _has_seeds(v: dict, n: int) -> bool:
    """Whether the stored evidence covers the first ``n`` seeds (the next look was run for this claim's arms)."""
    return len(v["evidence"]["better"]["values"]) >= n


def _stops_for_futility(claim: dict, bounds: list) -> bool:
    """An open claim stops before the last look when its estimate lies inside the margin: the median (sign test)
    or the median of the Walsh averages (signed rank) of the per-seed effects, at each end of their bounds."""
    m = math.log(claim["margin"]) if claim["scale"] == "ratio" else claim["margin"]
    c_holds, c_fails = (m, -m) if claim.get("kind", "superiority") == "superiority" else (-m, -m)

    def centre(x: list[float]) -> float:
        if claim.get("test", "sign") == "signed_rank":
            x = [(u + w) / 2 for i, u in enumerate(x) for w in x[i:]]
        return float(np.median(np.array(x, dtype=float))) if x else math.nan

    low, high = centre([b[0] for b in bounds]), centre([b[1] for b in bounds])
    return not (high > c_holds or low < c_fails)


def state_of(claim: dict, adjusted: float, toward: bool, low: float, high: float, bounds: list) -> str:
    m = math.log(claim["margin"]) if claim["scale"] == "ratio" else claim["margin"]
    superiority = claim.get("kind", "superiority") == "superiority"
    both_unreached = sum(1 for lo, hi in bounds if lo == -math.inf and hi == math.inf)
    if adjusted < ALPHA and toward and low > (m if superiority else -m):
        return "holds" if superiority else "noninferior"
    if adjusted < ALPHA and not toward and high < -m:
        return "fails"
    if superiority and m > 0 and -m < low and high < m and not both_unreached:
        return "equivalent"
    return "inconclusive"


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "results"
    rows, total = [], 0
    for directory in sorted(p for p in root.iterdir() if (p / "verdicts.json").exists()):
        claims, stages = claims_of(directory)
        verdicts = json.loads((directory / "verdicts.json").read_text(encoding="utf-8"))
        if len(claims) != len(verdicts):
            continue  # a check that builds its verdicts itself (no declared claims): nothing to recompute
        for claim, stored, state, p_stored, p_rechecked in recheck(claims, verdicts, stages):
            total += 1
            p_agrees = p_stored is not None and math.isclose(p_stored, p_rechecked, rel_tol=1e-6, abs_tol=1e-12)
            if state != stored or not p_agrees:
                rows.append(f"| {directory.name} | {claim[:70]} | {stored} | {state} | {p_stored} | "
                            f"{p_rechecked:.6g} |")
    agree = total - sum(1 for r in rows if r.split(" | ")[2] != r.split(" | ")[3])
    print(f"{agree} of {total} tested verdicts rechecked with scipy.stats agree in state "
          f"({100 * agree / max(total, 1):.1f} %); {len(rows)} differ in state or Holm p")
    if rows:
        print("| experiment | claim | stored | rechecked | stored Holm p | rechecked Holm p |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))
    sys.exit(0 if agree == total else 1)


if __name__ == "__main__":
    main()
