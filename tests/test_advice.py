"""Advice that helps: a command line Hydra cannot compose gets one line that says what was meant (did you mean,
which option has a key, what AdamW is here), a null group is refused or means "off" where off exists, and
nothing is trained or written on the way."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_in_process


def _refused(tmp_path, capsys, *argv) -> str:
    assert run_in_process([*argv, f"hydra.run.dir={tmp_path}/run"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run" / "summary.json").exists()
    return lines[0]


@pytest.mark.parametrize(("argv", "says"), [
    (("stpes=10",), "did you mean steps"),
    (("regularization.variable=q",), "regularization.variable belongs to regularization options gradnorm, l1, "
                                     "l2: select one (regularization=gradnorm regularization.variable=…)"),
    (("regularization=l2", "regularization.strenght=0.1"), "did you mean regularization.strength?"),
    (("preconditioner=adamw",), "AdamW is Adam with L2 in z: preconditioner=adam regularization=l2 "
                                "regularization.variable=z"),
    (("preconditioner=adma",), "did you mean preconditioner=adam?"),
    (("normalization=bnp",), "normalization_arm=bnp"),
])
def test_a_command_line_hydra_cannot_compose_gets_advice_not_a_plus(tmp_path, capsys, argv, says):
    line = _refused(tmp_path, capsys, *argv)
    assert says in line and "use +" not in line, line


def test_a_plus_on_an_unknown_key_is_refused_with_did_you_mean(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "+stpes=10")
    assert line.startswith("error: stpes:") and "did you mean steps?" in line


@pytest.mark.parametrize(("group", "off"), [("model", False), ("dataset", False), ("preconditioner", False),
                                            ("schedule", False), ("paths", False), ("logger", True),
                                            ("regularization", True), ("normalization", True)])
def test_a_null_group_is_refused_naming_its_options(tmp_path, capsys, group, off):
    line = _refused(tmp_path, capsys, f"{group}=null")
    assert line.startswith(f"error: {group}: expected one of [")
    assert (f"use {group}=none" in line) == off and (f"{group} cannot be off" in line) == (not off)


@pytest.mark.parametrize("group", ["curvature", "normalization_arm", "experiment"])
def test_null_means_off_for_a_group_that_may_be_off(tmp_path, group):
    assert run_in_process([f"{group}=null", "steps=3", "eval_every=3", f"hydra.run.dir={tmp_path}/run"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and "curvature/p/kappa" not in summary


def test_null_curvature_under_an_experiment_that_sets_its_keys_says_how_to_turn_it_off(tmp_path, capsys):
    """compare_preconditioners selects curvature=lanczos and sets its keys: curvature=null there leaves keys with
    no option, which is refused before any run with the way to turn it off."""
    line = _refused(tmp_path, capsys, "experiment=compare_preconditioners", "curvature=null",
                    f"hydra.sweep.dir={tmp_path}/sweep")
    assert line.startswith("error: curvature: expected a curvature option, or null with none of its keys set")
    assert "the experiment sets curvature.every: turn it off with curvature.enabled=false" in line
    assert not list((tmp_path / "sweep").rglob("summary.json"))


def test_a_finished_runs_line_names_its_job_and_rounds(tmp_path, capfd):
    assert run_in_process(["-m", "seed=0,1", "steps=40", "eval_every=10", "target.value=10",
                           f"hydra.sweep.dir={tmp_path}/sweep"]) == 0
    out = "".join(capfd.readouterr())
    lines = [line.split("[INFO] ", 1)[-1] for line in out.splitlines() if "status=" in line]
    assert sorted(line.split("]")[0] for line in lines) == ["[job 0", "[job 1"], out
    assert all("steps to target 0" in line or "target not reached" in line for line in lines), lines
    assert not any("000000" in line for line in lines)


@pytest.mark.parametrize("how", ["env", "override"])
def test_an_empty_output_root_is_refused_before_any_directory_is_made(tmp_path, capsys, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    if how == "env":
        monkeypatch.setenv("PRECOND_OUTPUT_ROOT", "")
        argv = ["steps=3"]
    else:
        monkeypatch.delenv("PRECOND_OUTPUT_ROOT", raising=False)
        argv = ["steps=3", "paths.output_root=''"]
    assert run_in_process(argv) == 2
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("error:"))
    key = "PRECOND_OUTPUT_ROOT" if how == "env" else "paths.output_root"
    assert line.startswith(f"error: {key}: expected a directory, got '' —")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["env", "override"])
def test_a_tilde_in_the_output_root_is_the_home_directory(tmp_path, monkeypatch, how):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    if how == "env":
        monkeypatch.setenv("PRECOND_OUTPUT_ROOT", "~/out")
        argv = ["steps=3", "eval_every=3"]
    else:
        monkeypatch.delenv("PRECOND_OUTPUT_ROOT", raising=False)
        argv = ["steps=3", "eval_every=3", "paths.output_root=~/out"]
    assert run_in_process(argv) == 0
    assert len(list((tmp_path / "home" / "out" / "runs").rglob("summary.json"))) == 1
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize(("argv", "key", "says"), [
    (("model=mlp", "preconditioner=bnp", "preconditioner.bnp_warmup=1000", "steps=100"),
     "preconditioner.bnp_warmup", "fewer than steps=100"),
    (("schedule=step", "schedule.step_size=500", "steps=100"), "schedule.step_size", "fewer than steps=100"),
    (("dataset=digits", "model=mlp", "target.metric=val/acc", "target.value=1.5"), "target.value",
     "an accuracy in (0, 1]"),
    (("target.value=-0.1",), "target.value", "a loss ≥ 0"),
])
def test_a_value_that_would_do_nothing_is_refused_naming_its_key(tmp_path, capsys, argv, key, says):
    line = _refused(tmp_path, capsys, *argv)
    assert line.startswith(f"error: {key}: expected ") and says in line, line


@pytest.mark.parametrize("launcher", ["basic", "packed"])
def test_a_plain_sweep_checks_every_jobs_config_before_the_first_trains(tmp_path, capsys, launcher):
    argv = ["-m", f"hydra/launcher={launcher}", "lr=0.1,-1,0.3", "steps=5", f"hydra.sweep.dir={tmp_path}/sweep"]
    assert run_in_process(argv) == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert line.startswith("error: lr: expected a finite number > 0, got -1")
    assert "in job 1 (progress=False lr=-1 steps=5)" in line
    assert not list((tmp_path / "sweep").rglob("summary.json")) and "Traceback" not in err


def test_only_a_plain_multirun_gets_the_checked_sweeper():
    from precond.run.entry import with_checked_sweeper

    assert with_checked_sweeper(["-m", "lr=0.1,0.3"]) == ["-m", "lr=0.1,0.3", "hydra/sweeper=checked"]
    assert with_checked_sweeper(["hydra.mode=MULTIRUN", "seed=0,1"])[-1] == "hydra/sweeper=checked"
    for argv in (["lr=0.1"], ["-m", "experiment=compare_preconditioners"], ["-m", "hydra/sweeper=basic", "seed=0,1"]):
        assert with_checked_sweeper(argv) == argv


@pytest.mark.parametrize(("value", "why"), [
    ("[" + "x" * 65 + "]", "of 1-64 characters"), ("['']", "of 1-64 characters"), ("[ok]", None)])
def test_wandb_tag_limits_are_checked_before_the_run_dir_exists(tmp_path, capsys, monkeypatch, value, why):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    argv = ["logger=wandb", f"logger.tags={value}", "steps=2", "eval_every=2", f"hydra.run.dir={tmp_path}/run"]
    if why is None:
        assert run_in_process(argv) == 0
        return
    line = _refused(tmp_path, capsys, *argv[:-1])
    assert line.startswith("error: logger.tags") and why in line, line
    assert not (tmp_path / "run").exists()


def test_a_wandb_note_longer_than_its_maximum_is_refused(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "logger=wandb", "logger.notes=" + "x" * 10_001)
    assert line.startswith("error: logger.notes: expected a string of 0-10000 characters")


def test_a_run_whose_overrides_make_a_long_wandb_name_trains(tmp_path):
    """The W&B run name precond derives from the identifying overrides can be long: no limit of ours refuses it
    (W&B's documented limit is on tags, 64 characters)."""
    argv = ["regularization=l1", "regularization.variable=p", "regularization.form=prox",
            "regularization.strength=0.001", "preconditioner.eps=1e-08", "lr=0.003", "steps=2", "eval_every=2",
            "name=a_rather_long_experiment_name_for_a_sweep", f"hydra.run.dir={tmp_path}/run"]
    assert len(",".join(argv[:-1])) > 128
    assert run_in_process(argv) == 0
    assert run_in_process(["logger=wandb", *argv[:-1], f"hydra.run.dir={tmp_path}/wandb_run"]) == 0


def test_keys_of_a_deleted_group_option_are_refused_with_the_way_to_turn_it_off(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "~curvature", "+curvature.every=100")
    assert line.startswith("error: curvature: expected a curvature option, or null with none of its keys set")
    assert "curvature.enabled=false" in line
