"""Progress when nobody watches: timed log lines when stderr is not a terminal, naming their job."""
import logging

import pytest

from precond.run.progress import BarProgress, LineProgress, make_progress


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_line_every_period_with_the_rate_measured_since_the_last_line(caplog):
    clock = FakeClock()
    progress = LineProgress(total=1000, initial=0, desc="job 7", every_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="precond"):
        for step in range(1, 401):
            clock.t += 0.125 if step <= 160 else 0.0625  # 8 steps/s, then 16 steps/s (exact in binary)
            progress.advance(step, False, lambda: {"batch loss": 0.25, "val/acc": 0.9})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # at 10 s, 20 s and 30 s of the clock: never per step
    assert lines[0] == "[job 7] step 80/1000 (8%) | 8 steps/s | eta 1m55s | batch loss 0.25 | val/acc 0.9"
    assert lines[2].startswith("[job 7] step 320/1000 (32%) | 16 steps/s | eta 42s")


def test_values_are_read_only_when_a_line_is_written():
    clock, reads = FakeClock(), []
    progress = LineProgress(total=100, initial=0, desc=None, every_s=5.0, clock=clock)
    for step in range(1, 101):
        clock.t += 0.125  # 12.5 s in all: lines at 5 s and 10 s
        progress.advance(step, True, lambda: reads.append(1) or {})
    assert len(reads) == 2  # a device-resident loss would be synced twice, not 100 times


def test_a_terminal_gets_the_bar_a_file_gets_lines_and_off_is_off():
    assert isinstance(make_progress(True, 30, 10, terminal=False), LineProgress)
    bar = make_progress(True, 30, 10, terminal=True)
    assert isinstance(bar, BarProgress)
    bar.close()
    assert make_progress(False, 30, 10, terminal=False) is None


def test_a_run_with_stderr_in_a_file_logs_progress_lines(cli):
    proc = cli("steps=3000", "eval_every=500", "progress=true", "progress_every_s=0.05")
    lines = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "/3000 (" in line]
    assert lines, proc.stderr
    assert "steps/s" in lines[0] and "batch loss" in lines[0] and "[job" not in lines[0]  # a single run


def test_packed_jobs_progress_lines_say_which_jobs_they_belong_to(cli):
    proc = cli("hydra/launcher=packed", "lr=0.01,0.03", "steps=3000", "eval_every=500", "progress=true",
               "progress_every_s=0.05", multirun=True)
    lines = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "/3000 (" in line]
    assert lines, proc.stderr
    assert "[pack of 2: job 0, job 1] step" in lines[0]
    assert "lowest batch loss (job " in lines[0] and "training 2/2" in lines[0]


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_a_bad_period_names_the_key(here, value):
    proc = here("steps=5", f"progress_every_s={value}", check=False)
    assert proc.returncode == 2 and "progress_every_s" in proc.stderr


def test_a_sweep_jobs_log_label_is_its_place_below_a_relative_sweep_dir(tmp_path, monkeypatch):
    """Hydra gives the job's dir absolute; the sweep dir from a command line may be relative."""
    import dataclasses
    from pathlib import Path

    from precond.run.entry import JobInfo

    monkeypatch.chdir(tmp_path)
    job = JobInfo(run_dir=tmp_path / "sweeps" / "s" / "confirmation" / "adam" / "seed109", overrides=[], choices={},
                  multirun=True, sweep_dir="sweeps/s")
    assert job.label == "job confirmation/adam/seed109"
    assert JobInfo(run_dir=Path("/elsewhere/3"), overrides=[], choices={}, multirun=True,
                   sweep_dir="sweeps/s").label == "job 3"
    assert dataclasses.replace(job, multirun=False).label is None  # a single run has no job label
