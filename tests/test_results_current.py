"""README Results never describe older code: each committed result names the fingerprint of the code and
configs it ran on, and this test fails once they change, until `make results` regenerates the results."""
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
    assert recorded["fingerprint"] == _results_script().fingerprint(ROOT, path.parent.name), (
        f"{path.parent.name}: code or configs changed after this result was made; run `make results`")


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
