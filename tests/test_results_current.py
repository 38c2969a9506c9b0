"""README Results never describe older code: each committed result names the fingerprints of what it rests on —
training (code, configs, data) and judging (the rule, the report code, the claims) — and this test fails once
either changes, until `make results` regenerates the results (retraining, or re-judging the stored evidence)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = sorted((ROOT / "docs" / "results").glob("*/provenance.json"))


def _results_script():
    spec = importlib.util.spec_from_file_location("results_script", ROOT / "scripts" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_committed_result_has_its_provenance():
    names = {p.name for p in (ROOT / "docs" / "results").iterdir() if p.is_dir()}
    assert names and names == {p.parent.name for p in RESULTS}


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.parent.name)
def test_the_committed_result_ran_on_todays_code_and_configs(path):
    recorded = json.loads(path.read_text())
    assert recorded["commit"] and not recorded["commit"].endswith("-dirty"), "results from an uncommitted tree"
    prints = _results_script().fingerprints(ROOT, path.parent.name)
    assert recorded["fingerprint"] == prints["training"], (
        f"{path.parent.name}: training code or configs changed after this result was made; run `make results`")
    assert recorded.get("judging_fingerprint") == prints["judging"], (
        f"{path.parent.name}: the verdict rule, report code or claims changed; run `make results` (re-judges the "
        "stored evidence in seconds)")
    assert recorded.get("torch") and recorded.get("data"), "provenance names the torch version and the data"


def test_the_fingerprint_changes_with_a_config(tmp_path):
    script = _results_script()
    for rel in ("precond/x.py", "conf/a.yaml", "conf/experiment/e1.yaml", "conf/experiment/e2.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("1")
    before = {e: script.fingerprint(tmp_path, e) for e in ("e1", "e2")}
    (tmp_path / "conf/experiment/e2.yaml").write_text("2")  # another experiment's file: e1 is still current
    assert script.fingerprint(tmp_path, "e1") == before["e1"] and script.fingerprint(tmp_path, "e2") != before["e2"]
    (tmp_path / "conf/a.yaml").write_text("2")  # a shared config: every result is stale
    assert script.fingerprint(tmp_path, "e1") != before["e1"]


SELECTIONS = sorted((ROOT / "docs" / "results").glob("*/selection.json"))


@pytest.mark.parametrize("path", SELECTIONS, ids=lambda p: p.parent.name)
def test_no_committed_selection_chose_a_point_whose_tuning_runs_did_not_hold_the_target(path):
    """Where any grid point reached and held the target on every tuning seed, the chosen point is one of
    those; a choice by final metric happens only when no point did; an arm with no eligible point is invalid; an
    arm with a one-point grid has no tuning runs and that point."""
    for arm, entry in json.loads(path.read_text())["arms"].items():
        standings = [p["standing"] for p in entry["points"]]
        if entry.get("chosen") is None:
            assert entry.get("invalid") and "held" not in standings and "completed" not in standings, arm
            continue
        if not entry["points"]:  # one grid point: nothing to choose, no tuning runs
            assert entry["tuning_seeds"] == [] and entry["basis"].startswith("the only point"), arm
            assert [entry["chosen"]] == [dict(zip(entry["grid"], v)) for v in zip(*entry["grid"].values())], arm
            continue
        chosen = next(p for p in entry["points"] if p["point"] == entry["chosen"])
        if "held" in standings:
            assert chosen["standing"] == "held" and entry["basis"].startswith("median steps"), arm
        else:
            assert chosen["standing"] == "completed" and entry["basis"].startswith("median final"), arm


def test_a_check_script_counts_only_for_its_own_experiment(tmp_path):
    script = _results_script()
    for rel in ("precond/x.py", "scripts/check_local_rate.py", "scripts/check_kappa_plus.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("1")
    before = {e: script.fingerprint(tmp_path, e) for e in ("local_rate", "kappa_plus", "compare_preconditioners")}
    (tmp_path / "scripts/check_kappa_plus.py").write_text("2")
    after = {e: script.fingerprint(tmp_path, e) for e in before}
    assert after["kappa_plus"] != before["kappa_plus"]
    assert after["local_rate"] == before["local_rate"] and after["compare_preconditioners"] == before[
        "compare_preconditioners"]


def test_judging_and_training_inputs_are_fingerprinted_apart(tmp_path):
    """A change to the rule, the report code or an experiment's claims re-judges (judging fingerprint); a change to
    training code or to the rest of an experiment's config retrains (training fingerprint); a check that decides
    its verdicts in the script is re-rendered on a rule change but rerun when the fit it uses (stats.py) changes."""
    script = _results_script()
    files = {"precond/train.py": "1", "precond/sweep/verdicts.py": "1", "precond/sweep/stats.py": "1",
             "scripts/results.py": "1",
             "conf/experiment/compare_preconditioners.yaml":
                 "steps: 10\nhydra:\n  sweeper:\n    claims: [{claim: a}]\n",
             "scripts/check_local_rate.py": "1"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    def prints():
        return {e: script.fingerprints(tmp_path, e) for e in ("compare_preconditioners", "local_rate")}

    before = prints()
    (tmp_path / "precond/sweep/verdicts.py").write_text("2")  # the rule
    after = prints()
    assert after["compare_preconditioners"]["training"] == before["compare_preconditioners"]["training"]
    assert after["compare_preconditioners"]["judging"] != before["compare_preconditioners"]["judging"]
    assert after["local_rate"]["training"] == before["local_rate"]["training"]  # its report is re-rendered
    assert after["local_rate"]["judging"] != before["local_rate"]["judging"]
    (tmp_path / "precond/sweep/stats.py").write_text("2")  # the fit a check script decides with: it reruns
    fit = prints()
    assert fit["local_rate"]["training"] != after["local_rate"]["training"]
    assert fit["compare_preconditioners"]["training"] == after["compare_preconditioners"]["training"]
    after = fit
    yaml = tmp_path / "conf/experiment/compare_preconditioners.yaml"
    yaml.write_text("steps: 10\nhydra:\n  sweeper:\n    claims: [{claim: b}]\n")  # a claim: judging only
    again = prints()
    assert again["compare_preconditioners"]["training"] == after["compare_preconditioners"]["training"]
    assert again["compare_preconditioners"]["judging"] != after["compare_preconditioners"]["judging"]
    yaml.write_text("steps: 20\nhydra:\n  sweeper:\n    claims: [{claim: b}]\n")  # what is trained
    assert prints()["compare_preconditioners"]["training"] != again["compare_preconditioners"]["training"]
    (tmp_path / "precond/train.py").write_text("2")
    assert prints()["compare_preconditioners"]["judging"] == again["compare_preconditioners"]["judging"]
