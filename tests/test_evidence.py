"""Stored evidence, the independent re-check of verdicts with scipy.stats, and the stability summary."""
from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest

from precond.sweep.evidence import EvidenceError, read_evidence, write_evidence
from precond.sweep.verdicts import Claim, judge_staged
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    return load_script(name)


def test_evidence_round_trips_non_finite_numbers_and_the_same_evidence_gives_the_same_bytes(tmp_path):
    evidence = {"format": 1, "runs": {"a": {"1": {"kappa": math.inf, "lam": -math.inf, "x": [1.5, None]}}}}
    write_evidence(tmp_path / "e.json.gz", evidence)
    assert read_evidence(tmp_path / "e.json.gz") == evidence
    first = (tmp_path / "e.json.gz").read_bytes()
    write_evidence(tmp_path / "e.json.gz", evidence)
    assert (tmp_path / "e.json.gz").read_bytes() == first and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content", [b"not gzip", gzip.compress(b"{not json"), gzip.compress(b'{"format": 99}')])
def test_unreadable_or_foreign_evidence_is_one_line_naming_the_file(tmp_path, content):
    (tmp_path / "e.json.gz").write_bytes(content)
    with pytest.raises(EvidenceError, match=r"e\.json\.gz: .*rerun the experiment"):
        read_evidence(tmp_path / "e.json.gz")


def _experiment(directory: Path, seed: int) -> None:
    """A results dir as a staged tuned experiment leaves it: selection.json (claims, stages) and verdicts.json,
    judged by precond's rule on random evidence with censored pairs, both tests, both kinds and three roles."""
    rng = random.Random(seed)
    seeds = list(range(100, 120))
    arms = {}
    for arm, speed in (("a", 1.0), ("b", 2.0), ("c", 1.1), ("d", 1.0)):
        arms[arm] = {}
        for s in seeds:
            steps = 300 * speed * math.exp(rng.gauss(0, 0.4))
            arms[arm][s] = {"status": "completed", "steps": 1000, "steps_to_target": steps if steps < 1000 else None,
                            "val/acc": 0.9 + 0.01 * rng.gauss(0, 1) - 0.01 * speed}
    claims = [Claim("a faster than b", better="a", than="b", metric="steps_to_target"),
              Claim("a faster than c", better="a", than="c", metric="steps_to_target", test="signed_rank"),
              Claim("d at least as fast as a", better="d", than="a", metric="steps_to_target", kind="noninferiority"),
              Claim("a more accurate than b", better="a", than="b", metric="val/acc", direction="higher",
                    role="control"),
              Claim("c faster than d", better="c", than="d", metric="steps_to_target", role="exploratory")]
    verdicts = judge_staged(claims, arms, seeds, stages=[10, 20])
    directory.mkdir(parents=True)
    (directory / "selection.json").write_text(json.dumps({"claims": [c.as_dict() for c in claims],
                                                          "confirmation_seeds": seeds, "stages": [10, 20]}))
    (directory / "verdicts.json").write_text(json.dumps([v.as_dict() for v in verdicts]))


def test_the_recheck_with_scipy_agrees_with_every_verdict_and_catches_a_tampered_one(tmp_path, capsys):
    recheck = _script("recheck_verdicts")
    for seed in range(4):
        _experiment(tmp_path / f"e{seed}", seed)
    states = [v["verdict"] for seed in range(4)
              for v in json.loads((tmp_path / f"e{seed}" / "verdicts.json").read_text())]
    assert len(set(states)) >= 3  # the evidence reaches several states, not one
    import sys
    old = sys.argv
    sys.argv = ["recheck_verdicts.py", str(tmp_path)]
    try:
        with pytest.raises(SystemExit) as ok:
            recheck.main()
        out = capsys.readouterr().out
        assert ok.value.code == 0 and "20 of 20 tested verdicts rechecked with scipy.stats agree" in out
        path = tmp_path / "e0" / "verdicts.json"
        verdicts = json.loads(path.read_text())
        tampered = next(v for v in verdicts if v.get("p_value") is not None)
        tampered["verdict"] = "fails" if tampered["verdict"] != "fails" else "holds"
        path.write_text(json.dumps(verdicts))
        with pytest.raises(SystemExit) as bad:
            recheck.main()
        assert bad.value.code == 1 and "19 of 20" in capsys.readouterr().out
    finally:
        sys.argv = old


def test_the_recheck_catches_a_claim_stopped_early_whose_estimate_cleared_the_margin(tmp_path, capsys):
    """c beats d beyond the margin on 8 of the first 10 seeds (open, but promising) and on all later ones: the rule
    takes it to look 2, where it holds. Stored as if it had stopped at look 1, the recheck finds it should not."""
    seeds = list(range(100, 120))
    values = {"c": [100.0] * 20, "d": [300.0] * 8 + [100.0] * 2 + [300.0] * 10}
    arms = {arm: {s: {"status": "completed", "steps": 1000, "steps_to_target": x} for s, x in zip(seeds, xs)}
            for arm, xs in values.items()}
    claims = [Claim("c faster than d", better="c", than="d", metric="steps_to_target")]
    first = judge_staged(claims, arms, seeds, stages=[10])  # look 1 alone, as a wrongly stopped claim would be
    (staged,) = judge_staged(claims, arms, seeds, stages=[10, 20])
    assert staged.verdict == "holds" and staged.effect["look"] == [2, 2, 20]
    directory = tmp_path / "e"
    directory.mkdir()
    (directory / "selection.json").write_text(json.dumps({"claims": [c.as_dict() for c in claims],
                                                          "confirmation_seeds": seeds, "stages": [10, 20]}))
    stopped = staged.as_dict()
    stopped.update(verdict="inconclusive", p_adjusted=2 * first[0].p_adjusted)
    stopped["effect"] = {**stopped["effect"], "look": [1, 2, 10], "family_size": 1}
    (directory / "verdicts.json").write_text(json.dumps([stopped]))
    recheck = _script("recheck_verdicts")
    import sys
    old, sys.argv = sys.argv, ["recheck_verdicts.py", str(tmp_path)]
    try:
        with pytest.raises(SystemExit) as bad:
            recheck.main()
    finally:
        sys.argv = old
    out = capsys.readouterr().out
    assert bad.value.code == 1 and "0 of 1" in out and "open at look 1" in out, out


def test_the_stability_summary_counts_kept_decisive_verdicts_and_flips():
    stability = _script("stability")
    rows = [{"committed": "holds", "draws": ["holds", "holds"]},
            {"committed": "holds", "draws": ["holds", "inconclusive"]},
            {"committed": "fails", "draws": ["fails", "fails"]},
            {"committed": "inconclusive", "draws": ["holds", "fails"]},  # not decisive, but a flip between draws
            {"committed": "noninferior", "draws": ["noninferior", "noninferior"]},
            {"committed": "equivalent", "draws": ["inconclusive", "equivalent"]}]
    assert stability.summarize(rows) == {"decisive": 4, "kept": 3, "flips": 1, "share": 0.75}


def test_the_identity_check_verifies_both_identities_and_its_control_on_fresh_seeds(tmp_path):
    """AdamW = Adam with L2 in z (against torch.optim.AdamW), Adam with L2 in p differs, BNP's step = η P Pᵀ g."""
    script = _script("check_identities")
    import sys
    old = sys.argv
    sys.argv = ["check_identities.py", "--out", str(tmp_path), "--seeds", "2"]
    try:
        script.main()
    finally:
        sys.argv = old
    verdicts = json.loads((tmp_path / "verdicts.json").read_text())
    assert [v["verdict"] for v in verdicts] == ["identity"] * 3
    values = verdicts[0]["evidence"]["better"]["values"] + verdicts[2]["evidence"]["better"]["values"]
    assert max(values) < 1e-12 and min(verdicts[1]["evidence"]["better"]["values"]) > 0.1
    assert read_evidence(tmp_path / "evidence.json.gz")["claims"][0]["identity"] is True


def test_stability_runs_made_from_an_earlier_result_are_removed_and_todays_are_kept(tmp_path, monkeypatch):
    """After `make results` re-ran an experiment, its old stability draws must run again (they would be
    reported as finished); an interrupted stability run of the same result resumes."""
    stability = _script("stability")
    monkeypatch.setattr(stability, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(stability, "OUT", tmp_path / "stability")
    result = tmp_path / "results" / "exp"
    result.mkdir(parents=True)
    (result / "selection.json").write_text("{}")
    draw = tmp_path / "stability" / "exp" / "confirmation" / "seed=200"
    draw.mkdir(parents=True)  # a draw from a stability run that predates any marker
    (tmp_path / "stability" / "exp_200.log").write_text("old")
    assert stability.drop_stale("exp") is True and not draw.exists()
    assert not (tmp_path / "stability" / "exp_200.log").exists()
    draw.mkdir(parents=True)  # a draw of today's result, interrupted
    assert stability.drop_stale("exp") is False and draw.exists()
    import os
    os.utime(result / "selection.json", ns=(1, 1))  # make results wrote a new selection
    assert stability.drop_stale("exp") is True and not draw.exists()
