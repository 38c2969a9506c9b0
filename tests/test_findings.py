"""The findings page: every sentence rests on committed verdicts in the states it states, the page shows them
as they are, and a verdict that changes state makes the check fail (shown by changing one on purpose)."""
from __future__ import annotations

import json
import shutil

from tests.conftest import ROOT, load_script

findings_script = load_script("findings")


def test_every_cited_verdict_has_the_state_its_finding_states():
    findings = findings_script.load()
    assert len(findings) >= 4
    assert findings_script.check(findings) == []


def test_a_cited_verdict_that_changes_state_is_caught_naming_the_finding(tmp_path):
    findings = findings_script.load()
    row = findings[0]["rests_on"][0]
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results" / row["experiment"], results / row["experiment"])
    for f in findings[1:]:
        for other in f["rests_on"]:
            if not (results / other["experiment"]).exists():
                shutil.copytree(ROOT / "docs" / "results" / other["experiment"], results / other["experiment"])
    assert findings_script.check(findings, results) == []
    path = results / row["experiment"] / "verdicts.json"
    verdicts = json.loads(path.read_text())
    cited = next(v for v in verdicts if v["claim"] == row["claim"])
    cited["verdict"] = "inconclusive" if row["state"] != "inconclusive" else "holds"
    path.write_text(json.dumps(verdicts))
    problems = findings_script.check(findings, results)
    assert problems == [f"{findings[0]['title']}: '{row['claim']}' in {row['experiment']} is {cited['verdict']}, "
                        f"the finding states {row['state']}"]
    cited_claims = {r["claim"] for r in findings[0]["rests_on"]}
    verdicts = [v for v in verdicts if v["claim"] not in cited_claims]
    path.write_text(json.dumps(verdicts))
    assert any("has no claim" in line for line in findings_script.check(findings, results))


def test_the_page_shows_each_cited_row_as_it_is_now():
    findings = findings_script.load()
    page = findings_script.render(findings)
    for f in findings:
        assert f["finding"].strip() in page
        for row in f["rests_on"]:
            v = findings_script.verdict_of(row)
            role = (v.get("effect") or {}).get("role", "check")
            assert f"| {row['claim']} | {role} | **{v['verdict']}** |" in page
    committed = (ROOT / "docs" / "findings.md").read_text(encoding="utf-8")
    assert committed == page + "\n", "docs/findings.md is stale: run `python scripts/findings.py`"
