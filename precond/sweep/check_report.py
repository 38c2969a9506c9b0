"""The report of a check script (a closed-form or curvature experiment run outside the tuned sweeps).

Writes ``comparison.md`` (title, what was run, tables, plots, the verdict lines) and ``verdicts.json``
(every :class:`~precond.sweep.verdicts.Verdict`), the two files ``make results`` collects, and the evidence
(``evidence.json.gz``) that lets :func:`rejudge_check_report` redo them in seconds without rerunning the check:
for a check judged on declared claims (:func:`write_judged_check_report`) the claims, the per-seed values and
the text sections, judged again by today's rule; for a check whose script decides its verdicts itself
(:func:`write_check_report`: a fitted slope against its prediction) the sections and the verdicts as decided,
re-rendered.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from precond.sweep.evidence import EVIDENCE, FORMAT, read_evidence, write_evidence
from precond.sweep.verdicts import RULE, Claim, Verdict, families_text, judge_all


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_check_report(out: Path, name: str, sections: Sequence[str], verdicts: Sequence[Verdict]) -> str:
    """Write the report of a check whose script decided its verdicts itself (a fitted slope against its
    prediction, an identity): ``comparison.md``, ``verdicts.json`` and the evidence to re-render them
    (``evidence.json.gz``: the text sections and the verdicts as decided); return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    write_evidence(out / EVIDENCE, {"format": FORMAT, "kind": "fixed", "name": name, "sections": list(sections),
                                    "verdicts": [v.as_dict() for v in verdicts]})
    return _render(out, name, list(sections), list(verdicts))


def _render(out: Path, name: str, sections: list, verdicts: list) -> str:
    """``comparison.md`` and ``verdicts.json`` of a check."""
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# {name}\n\n" + "\n\n".join(s.strip() for s in sections) + "\n\n## Verdicts\n\n"
            + "".join(f"- {v.line()}\n" for v in verdicts))
    (out / "comparison.md").write_text(text, encoding="utf-8")
    (out / "verdicts.json").write_text(json.dumps([v.as_dict() for v in verdicts], indent=2) + "\n", encoding="utf-8")
    return text


def fmt(x, digits: int = 3) -> str:
    """A number for a table: ``—`` for None, ``∞`` for inf, else ``digits`` significant digits."""
    if x is None:
        return "—"
    if x == float("inf"):
        return "∞"
    return f"{x:.{digits}g}"


def write_judged_check_report(out: Path, name: str, sections: Sequence[str], claims: Sequence[Claim], runs: dict,
                              seeds: list) -> str:
    """Judge ``claims`` on ``runs`` (``{arm: {seed: summary}}``) over ``seeds``, keep that evidence in
    ``out/evidence.json.gz`` and write the report; return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    write_evidence(out / EVIDENCE, {"format": FORMAT, "kind": "check", "name": name, "sections": list(sections),
                                    "claims": [c.as_dict() for c in claims], "seeds": list(seeds),
                                    "runs": {arm: {str(s): v for s, v in by.items()} for arm, by in runs.items()}})
    return _judged(out, name, list(sections), list(claims), runs, list(seeds))


def rejudge_check_report(out: Path) -> list[Verdict]:
    """Judge (declared claims) or re-render (verdicts the script decided) a check's report from its stored
    evidence; nothing is rerun."""
    evidence = read_evidence(out / EVIDENCE)
    if evidence.get("kind") == "fixed":
        verdicts = [Verdict(**v) for v in evidence["verdicts"]]
        _render(out, evidence["name"], evidence["sections"], verdicts)
        return verdicts
    claims = [Claim(**c) for c in evidence["claims"]]
    runs = {arm: {int(s): v for s, v in by.items()} for arm, by in evidence["runs"].items()}
    _judged(out, evidence["name"], evidence["sections"], claims, runs, evidence["seeds"])
    return judge_all(claims, runs, evidence["seeds"])


def _judged(out: Path, name: str, sections: list, claims: list, runs: dict, seeds: list) -> str:
    verdicts = judge_all(claims, runs, seeds)
    rule = f"{families_text(claims, len(seeds), 0)}. Rule: {RULE}."
    return _render(out, name, [*sections, rule], verdicts)
