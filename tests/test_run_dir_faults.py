"""A run dir whose files were damaged by hand: nothing is appended to another attempt's files, and a run that
cannot have written what it finds starts over with the old files kept beside it."""
from __future__ import annotations

import json

import pytest
import torch

from precond.run.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEYS,
    LOOP_KEYS,
    CheckpointError,
    load_checkpoint,
)
from tests.conftest import run_in_process

ARGS = ["steps=20", "eval_every=10", "checkpoint_every=10"]


def _steps_logged(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_finished_run_without_its_config_is_set_aside_not_appended_to(tmp_path):
    run_dir = tmp_path / "run"
    assert run_in_process([*ARGS, f"hydra.run.dir={run_dir}"]) == 0
    first = _steps_logged(run_dir)
    old_model = (run_dir / "model.pt").read_bytes()
    (run_dir / "config.yaml").unlink()
    assert run_in_process([*ARGS, f"hydra.run.dir={run_dir}"]) == 0
    assert _steps_logged(run_dir) == first == [0, 10, 20]  # a fresh file, not 0, 10, 20, 0, 10, 20
    assert (run_dir / "metrics.jsonl.attempt1").exists() and (run_dir / "summary.json.attempt1").exists()
    assert (run_dir / "model.pt.attempt1").read_bytes() == old_model


def test_a_finished_run_whose_model_is_missing_runs_again(tmp_path, capfd):
    run_dir = tmp_path / "run"
    assert run_in_process([*ARGS, f"hydra.run.dir={run_dir}"]) == 0
    (run_dir / "model.pt").unlink()
    assert run_in_process([*ARGS, f"hydra.run.dir={run_dir}"]) == 0
    assert (run_dir / "model.pt").exists() and (run_dir / "summary.json.attempt1").exists()
    assert "model.pt is missing: running it again" in "".join(capfd.readouterr())


def _checkpoint_at(step: int) -> dict:
    """A checkpoint with every key a resumable one holds, at ``step`` (its loop agrees)."""
    loop = {key: 0 for key in LOOP_KEYS} | {"step": step}
    return {key: {} for key in CHECKPOINT_KEYS} | {"format": CHECKPOINT_FORMAT, "step": step, "loop": loop,
                                                     "wandb_id": None}


def test_a_checkpoint_beyond_the_runs_steps_is_refused_as_damaged(tmp_path):
    torch.save(_checkpoint_at(1_000_000), tmp_path / CHECKPOINT)
    assert load_checkpoint(tmp_path)["step"] == 1_000_000  # well formed: only the budget tells
    with pytest.raises(CheckpointError, match=r"at step 1000000, beyond the run's steps=20: damaged"):
        load_checkpoint(tmp_path, steps=20)
    assert load_checkpoint(tmp_path, steps=1_000_000)["step"] == 1_000_000


def test_a_run_finding_a_checkpoint_beyond_its_steps_starts_over_and_keeps_it_aside(tmp_path, capfd):
    run_dir = tmp_path / "run"
    assert run_in_process([*ARGS, f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["status"] = "interrupted"  # an unfinished run, as a SIGTERM leaves it, whose checkpoint was edited
    (run_dir / "summary.json").write_text(json.dumps(summary))
    torch.save(_checkpoint_at(1_000_000), run_dir / CHECKPOINT)
    assert run_in_process([*ARGS, f"hydra.run.dir={run_dir}"]) == 0
    assert "beyond the run's steps=20: damaged" in "".join(capfd.readouterr())
    final = json.loads((run_dir / "summary.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 20 and _steps_logged(run_dir) == [0, 10, 20]
    assert (run_dir / f"{CHECKPOINT}.attempt1").exists()
