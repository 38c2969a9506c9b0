"""Broken files, full disks and crafted inputs: one line each, nothing already written is lost, and
nothing in a run dir or on the command line runs code."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from precond.run.checkpoint import CHECKPOINT
from precond.sweep.runs import load_runs
from tests.conftest import ROOT, load_script, read_summary, run_in_process

SHORT = ["steps=20", "eval_every=5"]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_refused_run_leaves_nothing_so_the_corrected_command_can_use_its_dir(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_in_process([*SHORT, "model=mlp", "model.widths=64", f"hydra.run.dir={run_dir}"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "error: model.widths: expected a list of 1-100 values, each an integer in [1, 100000], got 64 — "
        "e.g. model.widths=[64,64]"]
    assert not run_dir.exists()
    assert run_in_process([*SHORT, "model=mlp", "model.widths=[64]", f"hydra.run.dir={run_dir}"]) == 0
    assert read_summary(run_dir)["status"] == "completed"


@pytest.mark.parametrize("argv,start", [
    (["+stpes=10"], "error: stpes: expected one of the keys"),
    (["preconditioner.rho=3"], "error: preconditioner.rho: Could not override 'preconditioner.rho'"),
    (["lr=0.1,0.2"], "error: "),  # a sweep list in a single run: Hydra's own message, one line
    (["experiment=../../../tmp/x"], "error: experiment: expected an option of conf/experiment/ by name"),
    (["experiment=/etc/passwd"], "error: experiment: expected an option of conf/experiment/ by name"),
    (["name=../../elsewhere"], "error: name: expected a name of 1-100 characters"),
])
def test_hydra_errors_and_paths_are_one_line_and_exit_2(tmp_path, capsys, argv, start):
    assert run_in_process([*SHORT, *argv, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and _error_lines(err)[0].startswith(start), err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_run_dir_that_is_a_file_is_one_line_and_the_file_is_untouched(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert run_in_process([*SHORT, f"hydra.run.dir={target}"]) == 1
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "could not write" in err and "Traceback" not in err, err
    assert target.read_text() == "keep me"


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    assert run_in_process([*SHORT, f"hydra.run.dir={tmp_path / ('x' * 300)}"]) == 1
    err = capsys.readouterr().err
    assert _error_lines(err) and "too long" in _error_lines(err)[0] and "Traceback" not in err, err


def test_a_full_disk_mid_run_is_one_line_and_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    from precond.run import checkpoint

    real = checkpoint.torch.save
    calls = {"n": 0}

    def fills_up(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # two checkpoints fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", fills_up)
    run_dir = tmp_path / "run"
    assert run_in_process([*SHORT, "checkpoint_every=5", f"hydra.run.dir={run_dir}"]) == 1
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "the disk is full" in err and "Traceback" not in err, err
    kept = torch.load(run_dir / CHECKPOINT, weights_only=True)  # the last good checkpoint is intact
    assert kept["step"] == 10
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()][:3] == [0, 5, 10]


def test_a_checkpoint_that_loads_but_lacks_keys_is_set_aside_and_the_run_starts_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_in_process([*SHORT, "checkpoint_every=0", f"hydra.run.dir={run_dir}"]) == 0
    (run_dir / "summary.json").unlink()  # as if it had stopped before the end ...
    torch.save({"format": 1, "step": 10}, run_dir / CHECKPOINT)  # ... with a checkpoint missing its state
    assert run_in_process([*SHORT, "checkpoint_every=0", f"hydra.run.dir={run_dir}"]) == 0
    assert read_summary(run_dir)["status"] == "completed" and "resumed_at" not in read_summary(run_dir)
    assert (run_dir / f"{CHECKPOINT}.attempt1").exists()
    assert "lacks ['loop', 'model'" in capsys.readouterr().out + (run_dir / "train.log").read_text()


def test_metrics_shorter_than_the_checkpoint_say_what_history_was_lost(tmp_path, monkeypatch, capsys):
    from precond.run import entry
    from tests.test_resume import StopBeforeStep

    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(entry, "StopRequest", lambda: StopBeforeStep(16))
        assert run_in_process([*SHORT, f"hydra.run.dir={run_dir}"]) == 143
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")  # records of steps 10, 15 lost
    assert run_in_process([*SHORT, f"hydra.run.dir={run_dir}"]) == 0
    log = capsys.readouterr().out + (run_dir / "train.log").read_text()
    assert "ends before the checkpoint's last evaluation at step 15: the records after step 5" in log


def test_the_report_skips_and_names_runs_with_wrong_typed_values(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_in_process(["-m", *SHORT, "lr=0.01,0.02,0.03,0.04", f"hydra.sweep.dir={sweep}"]) == 0
    for job, change in (("1", {"steps_to_target": "soon"}), ("2", {"overrides": "lr=0.03"}),
                        ("3", {"val/loss": "low"})):
        summary = read_summary(sweep / job)
        (sweep / job / "summary.json").write_text(json.dumps({**summary, **change}))
    problems: list[str] = []
    assert [r.path.name for r in load_runs(sweep, problems)] == ["0"]
    assert len(problems) == 3 and all("skipped" in p for p in problems)
    proc = subprocess.run([sys.executable, "-m", "precond.sweep.report", str(sweep)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "steps_to_target is 'soon'" in (sweep / "comparison.md").read_text()


def test_sigterm_between_two_sweep_jobs_writes_the_table_of_the_finished_ones(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from precond.run import entry\n"
        "real, jobs = entry.StopRequest, []\n"
        "def slow_start():\n"
        "    jobs.append(1)\n"
        "    if len(jobs) == 2:  # the second job has not started its run: no stop request is active\n"
        "        print('between', flush=True); time.sleep(60)\n"
        "    return real()\n"
        "entry.StopRequest = slow_start\n"
        "sys.argv = ['precond-train', '-m', 'steps=10', 'eval_every=5', 'progress=false', 'lr=0.01,0.02',\n"
        f"            'hydra.sweep.dir={sweep}']\n"
        "entry.main()\n")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HOME": str(tmp_path)})
    while (line := proc.stdout.readline()) and line.strip() != "between":
        pass
    assert line.strip() == "between"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert "interrupted between jobs" in err
    assert "| all runs | 0.01 | 1/1 |" in (sweep / "comparison.md").read_text()  # the one job that finished
    assert read_summary(sweep / "0")["status"] == "completed" and not (sweep / "1" / "summary.json").exists()


def test_the_analysis_script_runs_no_code_from_a_crafted_config(tmp_path):
    run_dir = tmp_path / "run"
    assert run_in_process([*SHORT, f"hydra.run.dir={run_dir}"]) == 0
    marker = tmp_path / "pwned"
    config = (run_dir / "config.yaml").read_text()
    crafted = config.replace("_target_: precond.data.SyntheticData",
                             "_target_: pathlib.Path.touch\n  self: " + str(marker), 1)
    assert crafted != config
    (run_dir / "config.yaml").write_text(crafted)
    proc = subprocess.run([sys.executable, "scripts/analyze_curvature.py", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "dataset._target_: expected one of the settings classes" in proc.stderr
    assert not marker.exists()


class _SignalAfterTheLastStep:
    """Stands in for StopRequest: SIGTERM 'arrives' once the job's last step is taken (poll ``after + 1``)."""

    def __init__(self, after: int):
        self.after, self.polls, self.signum = after, 0, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def __call__(self) -> bool:
        self.polls += 1
        if self.polls > self.after:
            self.signum = signal.SIGTERM
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def forward(self) -> None:
        pass


@pytest.mark.parametrize("launcher", ["basic", "packed"])
def test_a_signal_after_a_jobs_last_step_still_stops_the_sweep(tmp_path, monkeypatch, launcher):
    from precond.run import entry
    from precond.sweep import pack_jobs

    for module in (entry, pack_jobs):
        monkeypatch.setattr(module, "StopRequest", lambda: _SignalAfterTheLastStep(10))
    sweep = tmp_path / "sweep"
    argv = ["-m", f"hydra/launcher={launcher}", "steps=10", "eval_every=5", "lr=0.01,0.02", "model=mlp",
            "normalization=batchnorm" if launcher == "basic" else "normalization=none", f"hydra.sweep.dir={sweep}"]
    if launcher == "packed":  # two packs of two
        argv += ["preconditioner=sgd,adam", "hydra.launcher.max_pack=2"]
    assert run_in_process(argv) == 128 + signal.SIGTERM
    finished = [read_summary(p.parent)["status"] for p in sweep.rglob("summary.json")]
    assert finished and set(finished) == {"completed"}  # the job(s) before the signal, complete
    assert len(finished) == (1 if launcher == "basic" else 2)  # and nothing after it
    assert (sweep / "comparison.md").exists()


def _damage(run_dir, kind):
    if kind == "yaml":
        (run_dir / "config.yaml").write_text("{{{ not: yaml")
    elif kind == "list":
        (run_dir / "config.yaml").write_text("- a\n- b\n")
    elif kind == "garbage_model":
        (run_dir / "model.pt").write_bytes(b"garbage")
    elif kind == "other_shapes":
        import torch

        torch.save({"weight": torch.zeros(3, 3)}, run_dir / "model.pt")
    elif kind == "no_optimizer":
        (run_dir / "optimizer.pt").unlink()


@pytest.mark.parametrize("kind,message", [
    ("yaml", "config.yaml: expected the run's resolved config (a YAML mapping), got "),
    ("list", "config.yaml: expected a YAML mapping, got list"),
    ("garbage_model", "model.pt: expected the model's weights (torch.save of its state_dict), got "),
    ("other_shapes", "model.pt: expected the model's weights (torch.save of its state_dict), got RuntimeError"),
    ("no_optimizer", "optimizer.pt: expected the optimizer's state (torch.save of its state_dict), got "),
])
def test_the_analysis_script_names_a_damaged_file_in_one_line(tmp_path, monkeypatch, capsys, kind, message):
    analyze = load_script("analyze_curvature")
    run_dir = tmp_path / "run"
    assert run_in_process([*SHORT, f"hydra.run.dir={run_dir}"]) == 0
    _damage(run_dir, kind)
    monkeypatch.setattr(sys, "argv", ["analyze_curvature.py", str(run_dir)])
    with pytest.raises(SystemExit) as stop:
        analyze.main()
    assert message in str(stop.value.code) and str(stop.value.code).startswith(f"error: {run_dir}: ")
    assert "\n" not in str(stop.value.code)


def test_the_analysis_script_measures_p_only_for_a_black_box(tmp_path, monkeypatch, capsys):
    analyze = load_script("analyze_curvature")
    run_dir = tmp_path / "run"
    assert run_in_process([*SHORT, "preconditioner=torch_optim", "preconditioner.name=NAdam",
                           f"hydra.run.dir={run_dir}"]) == 0
    monkeypatch.setattr(sys, "argv", ["analyze_curvature.py", str(run_dir), "--method", "dense"])
    analyze.main()
    out = capsys.readouterr().out
    assert "κ in z is not measured: preconditioner NAdam exposes no P" in out
    assert "\np " in out and "\nz " not in out


@pytest.mark.parametrize("free,expected", [(0, "the disk is full"), (10**12, "Input/output error")])
def test_torch_saves_own_write_failure_is_the_same_one_line(tmp_path, capsys, monkeypatch, free, expected):
    """A full disk inside torch.save surfaces as torch's RuntimeError ('[enforce fail at inline_container.cc…]
    … file write failed'), not as an OSError: it must end the run in one line like any other write failure."""
    from collections import namedtuple

    from precond.run import checkpoint

    real = checkpoint.torch.save
    calls = {"n": 0}

    def fails_inside_torch(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1728 vs 1616\n"
                               "PytorchStreamWriter failed writing file data/0: file write failed")
        return real(obj, f, *args, **kwargs)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.torch, "save", fails_inside_torch)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: usage(10**12, 10**12 - free, free))
    run_dir = tmp_path / "run"
    assert run_in_process([*SHORT, "checkpoint_every=5", f"hydra.run.dir={run_dir}"]) == 1
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and expected in err and "Traceback" not in err, err
    assert torch.load(run_dir / CHECKPOINT, weights_only=True)["step"] == 10  # the last good one is intact
    assert not list(run_dir.glob(".*.tmp*"))  # the partial file is removed


@pytest.mark.parametrize("arg", ["name=../..", "name=a/b", "+arm=../x"])
def test_an_unsafe_name_is_refused_before_hydra_makes_any_directory(tmp_path, capsys, arg):
    out = tmp_path / "out"
    assert run_in_process([arg, f"paths.output_root={out}", "steps=3"]) == 2
    err = capsys.readouterr().err
    assert "expected a name of 1-100 characters" in err and "Traceback" not in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
