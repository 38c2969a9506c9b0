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
    assert recorded["fingerprint"] == _results_script().fingerprint(ROOT), (
        f"{path.parent.name}: code or configs changed after this result was made; run `make results`")


def test_the_fingerprint_changes_with_a_config(tmp_path):
    script = _results_script()
    for rel in ("precond/x.py", "conf/a.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("1")
    before = script.fingerprint(tmp_path)
    (tmp_path / "conf/a.yaml").write_text("2")
    assert script.fingerprint(tmp_path) != before
