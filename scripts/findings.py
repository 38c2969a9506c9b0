"""The findings page, docs/findings.md, generated from docs/findings.yaml and the committed verdicts.

A finding is a sentence a researcher can quote, and the verdict rows it rests on: each row names an
experiment, a claim (its exact text) and the state the sentence needs (``holds``, ``fails``, ...). The page
prints each finding with its rows as they are now (state, effect and interval, Holm p), so the prose and the
evidence sit side by side. :func:`check` lists every row whose verdict no longer has the stated state (or is
gone); ``tests/test_findings.py`` fails on any, so a sentence cannot drift from the evidence it cites.

    python scripts/findings.py [--check]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FINDINGS = ROOT / "docs" / "findings.yaml"
PAGE = ROOT / "docs" / "findings.md"
RESULTS = ROOT / "docs" / "results"
START, END = "<!-- findings:start -->", "<!-- findings:end -->"


def load(path: Path = FINDINGS) -> list[dict]:
    """The findings: ``[{"finding": sentence, "title": short, "rests_on": [{"experiment", "claim", "state"}]}]``."""
    findings = yaml.safe_load(path.read_text(encoding="utf-8"))
    for i, f in enumerate(findings):
        if not isinstance(f, dict) or not f.get("finding") or not f.get("rests_on"):
            raise ValueError(f"{path}: finding {i} needs 'finding' (a sentence) and 'rests_on' (verdict rows)")
    return findings


def verdict_of(row: dict, results: Path = RESULTS) -> dict | None:
    """The committed verdict a row cites (None when the experiment or the claim is gone)."""
    path = results / row["experiment"] / "verdicts.json"
    if not path.exists():
        return None
    return next((v for v in json.loads(path.read_text(encoding="utf-8")) if v["claim"] == row["claim"]), None)


def check(findings: list[dict], results: Path = RESULTS) -> list[str]:
    """One line per cited row whose verdict is gone or no longer in the stated state."""
    problems = []
    for f in findings:
        for row in f["rests_on"]:
            v = verdict_of(row, results)
            if v is None:
                problems.append(f"{f['title']}: {row['experiment']} has no claim '{row['claim']}'")
            elif v["verdict"] != row["state"]:
                problems.append(f"{f['title']}: '{row['claim']}' in {row['experiment']} is {v['verdict']}, the "
                                f"finding states {row['state']}")
    return problems


def _effect(v: dict) -> str:
    from precond.sweep.tuned_report import effect_text

    return effect_text(v["effect"]) if v.get("effect") else "—"


def render(findings: list[dict], results: Path = RESULTS) -> str:
    """The findings page: per finding its sentence, then a table of the rows it rests on, as they are now."""
    out = ["# Findings", "",
           "What precond's experiments found, each stated as a sentence with the verdicts it rests on. The rows "
           "are read from the committed results ([results.md](results.md)) when the page is generated, and "
           "`tests/test_findings.py` fails when a cited verdict no longer has the state its sentence needs. "
           "Roles: *primary* — a prediction of the theory; *control* — a check that the setup measures what it "
           "should; *exploratory* — no prediction; *check* — decided by a check script's own stated rule (a fitted "
           "slope's interval against its prediction).", ""]
    for k, f in enumerate(findings, 1):
        out += [f"## {k}. {f['title']}", "", f["finding"].strip(), "",
                "| experiment | claim | role | verdict | effect [interval] | Holm p |", "|---|---|---|---|---|---|"]
        for row in f["rests_on"]:
            v = verdict_of(row, results) or {}
            role = (v.get("effect") or {}).get("role", "check")  # a check script's own verdict has no family
            p = v.get("p_adjusted")
            out.append(f"| [{row['experiment']}](results/{row['experiment']}/comparison.md) | {row['claim']} | "
                       f"{role} | **{v.get('verdict', 'missing')}** | {_effect(v) if v else '—'} | "
                       f"{'—' if p is None else f'{p:.3g}'} |")
        out.append("")
    return "\n".join(out)


def summary(findings: list[dict]) -> str:
    """One line per finding, for the README: its title and first sentence, linked to the page."""
    return "\n".join(f"- **{f['title']}.** {f['finding'].strip().split('. ')[0].rstrip('.')}. "
                     f"([rows](docs/findings.md#{k}-{_anchor(f['title'])}))" for k, f in enumerate(findings, 1))


def _anchor(title: str) -> str:
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -")
    return keep.replace(" ", "-")


def write(findings: list[dict], page: Path = PAGE, readme: Path = ROOT / "README.md") -> None:
    """Write docs/findings.md and the README's findings summary (between its markers)."""
    page.write_text(render(findings) + "\n", encoding="utf-8")
    text = readme.read_text(encoding="utf-8")
    if START in text and END in text:
        head, rest = text.split(START, 1)
        readme.write_text(head + START + "\n" + summary(findings) + "\n" + END + rest.split(END, 1)[1],
                          encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the cited verdicts (exit 1 on a mismatch)")
    args = parser.parse_args()
    findings = load()
    problems = check(findings)
    for line in problems:
        print(f"stale finding: {line}", file=sys.stderr)
    if not args.check:
        write(findings)
        print(f"wrote {PAGE.relative_to(ROOT)} ({len(findings)} findings)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
