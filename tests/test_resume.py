"""Resume: a run stopped at any step and re-run with the same run dir ends exactly where the same
run never stopped would (float64, CPU): same parameters (torch.equal), same metrics apart from
timings. Sweeps re-run with the same sweep dir skip finished jobs and resume interrupted ones."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from precond.data import BatchSampler
from precond.run import entry as train_module
from precond.run.checkpoint import CHECKPOINT, atomic_save, load_checkpoint
from precond.run.loop import LoopSettings, train
from tests.conftest import ROOT, read_metrics, read_summary, run_in_process, wait_for_records


class StopBeforeStep:
    """Stands in for :class:`precond.run.interrupts.StopRequest`: a SIGTERM 'arrives' before step ``at``
    of the job whose config has ``lr == only_lr`` (every job when None)."""

    def __init__(self, at: int, only_lr=None):
        self.at, self.only_lr, self.polls = at, only_lr, 0
        self.signum = None

    def __call__(self) -> bool:
        self.polls += 1
        if self.polls >= self.at and self.signum is None:
            self.signum = signal.SIGTERM
        return self.signum is not None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def forward(self) -> None:
        pass


def _timeless(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def _assert_same_run(resumed_dir, reference_dir) -> None:
    a = torch.load(resumed_dir / "model.pt", weights_only=True)
    b = torch.load(reference_dir / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "parameters differ"
    assert _timeless(read_metrics(resumed_dir)) == _timeless(read_metrics(reference_dir))
    sa, sb = read_summary(resumed_dir), read_summary(reference_dir)
    for key in [k for k in sb if "/" in k and not k.startswith("time/")] + ["status", "steps", "steps_to_target"]:
        assert sa[key] == sb[key], key
    oa = torch.load(resumed_dir / "optimizer.pt", weights_only=True)
    ob = torch.load(reference_dir / "optimizer.pt", weights_only=True)
    for pa, pb in zip(oa["state"].values(), ob["state"].values()):
        for k in pb:
            assert (torch.equal(pa[k], pb[k]) if torch.is_tensor(pb[k]) else pa[k] == pb[k]), k


CASES = {
    "adam+cosine": ["preconditioner=adam", "schedule=cosine", "schedule.warmup_steps=5"],
    "bnp on digits": ["preconditioner=bnp", "model=mlp", "dataset=digits", "batch_size=16",
                      "preconditioner.bnp_warmup=3", "target.metric=val/acc", "target.value=0.5"],
    "rmsprop+gradnorm z+lanczos": ["preconditioner=rmsprop", "regularization=gradnorm",
                                   "regularization.variable=z", "regularization.strength=0.01",
                                   "curvature=lanczos", "curvature.every=10", "curvature.max_matvecs=20"],
    "sgd momentum+l1 prox": ["preconditioner=sgd", "preconditioner.momentum=0.9", "regularization=l1",
                             "regularization.strength=0.001", "regularization.form=prox"],
}


@pytest.mark.parametrize("stop_before", [13, 11], ids=["mid-window", "right-after-an-evaluation"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_run_is_identical_to_one_never_stopped(tmp_path, monkeypatch, case, stop_before):
    common = ["steps=30", "eval_every=10", "dtype=float64", "device=cpu", *CASES[case]]
    assert run_in_process([*common, f"hydra.run.dir={tmp_path}/reference"]) == 0
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        m.setattr(train_module, "StopRequest", lambda: StopBeforeStep(stop_before))
        assert run_in_process([*common, f"hydra.run.dir={stopped}"]) == 128 + signal.SIGTERM
    summary = read_summary(stopped)
    assert summary["status"] == "interrupted" and summary["steps"] == stop_before - 1
    assert load_checkpoint(stopped)["step"] == stop_before - 1
    assert run_in_process([*common, f"hydra.run.dir={stopped}"]) == 0
    assert read_summary(stopped)["resumed_at"] == [stop_before - 1]
    assert not (stopped / CHECKPOINT).exists()  # a finished run keeps model.pt/optimizer.pt only
    assert json.loads((stopped / "summary.json.attempt1").read_text())["status"] == "interrupted"
    _assert_same_run(stopped, tmp_path / "reference")


def test_records_logged_after_the_checkpoint_are_dropped_and_logged_again(tmp_path, monkeypatch):
    """A run killed (SIGKILL, power cut) after logging past its last checkpoint: the records after the
    checkpoint's step and a half-written line are dropped on resume, then logged again once."""
    common = ["steps=40", "eval_every=5", "checkpoint_every=0", "dtype=float64"]
    assert run_in_process([*common, f"hydra.run.dir={tmp_path}/reference"]) == 0
    run_dir = tmp_path / "killed"
    with monkeypatch.context() as m:
        m.setattr(train_module, "StopRequest", lambda: StopBeforeStep(18))
        assert run_in_process([*common, f"hydra.run.dir={run_dir}"]) == 143
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 20, "val/loss": 123.0}) + "\n" + '{"step": 25, "val/lo')
    assert run_in_process([*common, f"hydra.run.dir={run_dir}"]) == 0
    _assert_same_run(run_dir, tmp_path / "reference")


def test_a_damaged_checkpoint_starts_the_run_over_and_is_kept(tmp_path, monkeypatch, capsys):
    common = ["steps=20", "eval_every=5", "dtype=float64"]
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(train_module, "StopRequest", lambda: StopBeforeStep(8))
        assert run_in_process([*common, f"hydra.run.dir={run_dir}"]) == 143
    damaged = (run_dir / CHECKPOINT).read_bytes()[:100]
    (run_dir / CHECKPOINT).write_bytes(damaged)
    assert run_in_process([*common, f"hydra.run.dir={run_dir}"]) == 0
    assert "checkpoint.pt is damaged" in capsys.readouterr().out
    assert (run_dir / f"{CHECKPOINT}.attempt1").read_bytes() == damaged
    assert "resumed_at" not in read_summary(run_dir)
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 5, 10, 15, 20]


def test_checkpoint_every_sets_when_checkpoints_are_written(tmp_path):
    """null: by time (checkpoint_every_s); N: every N steps; 0: never (but on interrupt); never at the last step."""
    from precond.data import synthetic
    from precond.run.files import RunLog

    data = synthetic(n_train=64, n_val=16, n_test=0, features=4)

    def steps_saved(checkpoint_every, stop_at=None, every_s=60.0):
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        saved, polls = [], iter(range(1, 10_000))
        settings = LoopSettings(steps=20, batch_size=8, eval_every=5, checkpoint_every=checkpoint_every,
                                checkpoint_every_s=every_s, progress=False)
        with RunLog(tmp_path / f"r{checkpoint_every}{stop_at}{every_s}", {}) as runlog:
            summary = train(model, optimizer, data, settings, runlog, checkpoint=lambda s: saved.append(s["step"]),
                            should_stop=(lambda: next(polls) >= stop_at) if stop_at else None)
        return saved, summary["status"]

    assert steps_saved(None) == ([], "completed")  # 20 steps take far less than 60 s
    assert steps_saved(None, every_s=1e-9) == (list(range(1, 20)), "completed")
    assert steps_saved(7) == ([7, 14], "completed")
    assert steps_saved(0) == ([], "completed")
    assert steps_saved(0, stop_at=9) == ([8], "interrupted")


def test_the_checkpoint_clock_writes_once_per_interval_of_wall_time():
    """checkpoint_every=null: due at the first step ``checkpoint_every_s`` after the start or the last write."""
    from precond.run.loop import CheckpointClock

    clock = CheckpointClock(LoopSettings(steps=100, batch_size=2, checkpoint_every_s=10.0))
    start = clock.last
    assert not clock.due(1, start + 9.99) and clock.due(2, start + 10.0)
    clock.written(start + 10.5)
    assert not clock.due(3, start + 20.4) and clock.due(4, start + 20.5)
    assert not clock.due(100, start + 1000.0)  # never at the last step: the run's own files follow
    steps = CheckpointClock(LoopSettings(steps=100, batch_size=2, checkpoint_every=25, checkpoint_every_s=1e-9))
    assert [s for s in range(1, 101) if steps.due(s, start + 1e6)] == [25, 50, 75]  # N steps: time plays no part


def test_checkpoint_every_is_validated():
    from precond.errors import ConfigError

    for bad in (-1, 1.5, "often", True):
        with pytest.raises(ConfigError, match="checkpoint_every"):
            LoopSettings(steps=10, batch_size=2, eval_every=5, checkpoint_every=bad)
    for bad in (0, -1.0, "hourly", True, None):
        with pytest.raises(ConfigError, match="checkpoint_every_s"):
            LoopSettings(steps=10, batch_size=2, checkpoint_every_s=bad)


def test_the_sampler_continues_its_stream_from_a_saved_state():
    whole = BatchSampler(10, 3, seed=4, device="cpu")
    expected = [whole.next() for _ in range(9)]
    first = BatchSampler(10, 3, seed=4, device="cpu")
    got = [first.next() for _ in range(4)]
    second = BatchSampler(10, 3, seed=999, device="cpu")
    second.load_state_dict(first.state_dict())
    got += [second.next() for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected)) and second.epoch == whole.epoch


def test_atomic_save_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(3)}, path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temporary file left behind


def test_a_rerun_sweep_skips_finished_jobs_resumes_the_interrupted_one_and_runs_the_missing(tmp_path,
                                                                                           monkeypatch):
    sweep = tmp_path / "sweep"
    common = ["steps=30", "eval_every=10", "dtype=float64"]
    argv = ["-m", *common, "lr=0.01,0.02,0.03", f"hydra.sweep.dir={sweep}"]
    calls = []

    def stop_in_second_job():
        calls.append(None)
        return StopBeforeStep(17 if len(calls) == 2 else 10**9)

    with monkeypatch.context() as m:
        m.setattr(train_module, "StopRequest", stop_in_second_job)
        assert run_in_process(argv) == 143
    assert read_summary(sweep / "0")["status"] == "completed"
    assert read_summary(sweep / "1")["status"] == "interrupted"
    assert not (sweep / "2").exists()
    first_job = {p.name: p.read_bytes() for p in (sweep / "0").iterdir() if p.is_file() and p.suffix != ".log"}

    assert run_in_process(argv) == 0
    assert {p.name: p.read_bytes() for p in (sweep / "0").iterdir()
            if p.is_file() and p.suffix != ".log"} == first_job  # not redone
    assert read_summary(sweep / "1")["resumed_at"] == [16]
    assert [read_summary(sweep / str(i))["status"] for i in range(3)] == ["completed"] * 3
    assert run_in_process([*common, "lr=0.02", f"hydra.run.dir={tmp_path}/alone"]) == 0
    _assert_same_run(sweep / "1", tmp_path / "alone")
    table = (sweep / "comparison.md").read_text()
    assert all(f"lr={lr}" in table for lr in ("0.01", "0.02", "0.03")) and "interrupted" not in table




def test_sigterm_then_the_same_command_resumes_into_the_same_offline_wandb_run(tmp_path):
    """The user's path: a real SIGTERM to a real process, then the same command again."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "HOME": str(tmp_path), "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    args = [sys.executable, "-m", "precond.run.entry", "steps=30000", "eval_every=1000", "dtype=float64",
            "progress=false", "logger=wandb"]
    proc = subprocess.Popen([*args, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_records(run_dir / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    stopped_at = read_summary(run_dir)["steps"]
    assert 1000 <= stopped_at < 30000 and "to resume" in err
    resumed = subprocess.run([*args, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run_dir)["resumed_at"] == [stopped_at]
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and len({p.name.rsplit("-", 1)[1] for p in offline}) == 1  # one W&B run id
    assert run_in_process([*args[3:], "logger=none", f"hydra.run.dir={tmp_path}/reference"]) == 0
    _assert_same_run(run_dir, tmp_path / "reference")


REQUEUE_WRAPPER = """
import json, signal, sys
from pathlib import Path
run_dir = Path(sys.argv[1])

def requeue(signum, frame):  # what submitit's USR2 handler does: requeue the job, then exit
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir.parent / "requeued").write_text(f"{summary['status']} {(run_dir / 'checkpoint.pt').exists()}")
    sys.exit(0)

signal.signal(signal.SIGUSR2, requeue)
sys.argv = ["precond-train", f"hydra.run.dir={run_dir}", "steps=1000000", "eval_every=500", "progress=false"]
from precond.run.entry import main
main()
"""


def test_a_cluster_signal_is_forwarded_to_the_launchers_handler_after_the_checkpoint(tmp_path):
    """Under submitit, SLURM's USR2 must reach submitit's requeue handler, but only once the run's
    checkpoint and interrupted summary are on disk (the requeued job resumes from them)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", REQUEUE_WRAPPER, str(run_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_records(run_dir / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err  # the wrapper's handler ran and exited
    assert (tmp_path / "requeued").read_text() == "interrupted True"
    assert read_summary(run_dir)["steps"] >= 500
