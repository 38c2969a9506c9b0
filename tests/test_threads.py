"""CPU threads: the ``threads`` key, the ``auto`` rule, the waiting policy and the FLOP count it reads."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from precond import threads
from precond.errors import ConfigError
from precond.threads import ThreadCount, busy_between, choose_threads, cpu_times, forward_flops
from tests.conftest import ROOT, run_in_process


def test_rule_accepts_auto_and_counts_up_to_the_available_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    rule = ThreadCount()
    assert rule.check("threads", "auto") == "auto"
    assert rule.check("threads", 4) == 4
    assert rule.check("threads", "3") == 3  # PRECOND_THREADS arrives as a string
    for bad in (0, -1, "abc", 5, True, 1.5, None):
        with pytest.raises(ConfigError, match=r"threads: expected auto or an integer in \[1, 4\]"):
            rule.check("threads", bad)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "99999"])
def test_bad_thread_counts_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys, value):
    code = run_in_process([f"threads={value}", f"hydra.run.dir={tmp_path}/run", "steps=5"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("error: threads: expected auto or an integer in [1, ")
    assert f"[1, {threads.available_cores()}]" in err
    assert not (tmp_path / "run").exists()


def test_environment_sets_the_default_and_a_bad_value_there_is_refused(tmp_path):
    env = {**os.environ, "PRECOND_THREADS": "0", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "precond.run.entry", f"hydra.run.dir={tmp_path}/run", "steps=5"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "threads: expected auto or an integer" in proc.stderr and "PRECOND_THREADS" in proc.stderr


def test_auto_is_one_thread_for_a_small_step_and_the_free_cores_otherwise(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    small, big = threads.SMALL_STEP_FLOPS / 2, threads.SMALL_STEP_FLOPS * 2
    assert choose_threads("auto", small, busy=0.0) == 1
    assert choose_threads("auto", big, busy=0.0) == 8
    assert choose_threads("auto", big, busy=2.6) == 5  # three cores busy with other work
    assert choose_threads("auto", big, busy=8.0) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a parallel launcher's share for this worker
    assert choose_threads("auto", big, busy=0.0) == 3
    assert choose_threads(6, small, busy=8.0) == 6  # a count is taken as given


def test_busy_cores_from_two_samples_of_proc_stat(tmp_path):
    def stat(ticks):  # user nice system idle iowait irq softirq steal
        lines = ["cpu  0 0 0 0 0 0 0 0"] + [f"cpu{i} " + " ".join(map(str, t)) for i, t in enumerate(ticks)]
        path = tmp_path / "stat"
        path.write_text("\n".join(lines) + "\nintr 1 2\n")
        return str(path)

    before = cpu_times({0, 1, 2}, stat([(10, 0, 0, 90, 0, 0, 0, 0)] * 4))
    # cpu0 fully busy, cpu1 a quarter busy (iowait counts as idle), cpu2 idle, cpu3 not allowed
    after = cpu_times({0, 1, 2}, stat([(110, 0, 0, 90, 0, 0, 0, 0), (35, 0, 0, 150, 15, 0, 0, 0),
                                       (10, 0, 0, 190, 0, 0, 0, 0), (110, 0, 0, 90, 0, 0, 0, 0)]))
    assert set(before) == {0, 1, 2}
    assert busy_between(before, after) == pytest.approx(1.0 + 0.25 + 0.0)


def test_a_busy_process_on_this_machine_is_seen():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        threads.time.sleep(0.3)
        assert threads.busy_cores(0.3) >= 0.5
    finally:
        busy.kill()
        busy.wait()


def test_forward_flops_match_the_closed_form_of_dense_layers():
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
    assert forward_flops(model, torch.randn(1, 20)) == 2 * (20 * 64 + 64 * 10)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    # a 3×3 convolution: 2·C_in·9 FLOPs per output element, 4·8·8 outputs
    assert forward_flops(conv, torch.randn(1, 1, 8, 8)) == 2 * 9 * 4 * 8 * 8 + 2 * 4 * 8 * 8 * 3
    grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2)  # each output sees C_in/groups = 2 channels
    assert forward_flops(grouped, torch.randn(1, 4, 5, 5)) == 2 * 2 * 9 * 6 * 5 * 5
    bn = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5))
    bn.train()
    forward_flops(bn, torch.randn(1, 5))  # eval mode inside: BatchNorm takes a batch of one
    assert bn.training and int(bn[1].num_batches_tracked) == 0


def test_a_run_records_and_applies_its_thread_count(tmp_path):
    before = torch.get_num_threads()
    try:
        assert run_in_process([f"hydra.run.dir={tmp_path}/run", "steps=5", "threads=2" if
                               threads.available_cores() >= 2 else "threads=1"]) == 0
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["threads"] == torch.get_num_threads() == min(2, threads.available_cores())
        # the default problem: a linear model with one output (d weights and a bias), batch 64: an addmm
        # of 2·d FLOPs per sample
        assert summary["step_flops"] == 2 * (summary["parameters"] - 1) * 64
        assert run_in_process([f"hydra.run.dir={tmp_path}/auto", "steps=5", "threads=auto"]) == 0
        assert json.loads((tmp_path / "auto" / "summary.json").read_text())["threads"] == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _policy_when_torch_loads(module: str, env: dict) -> str:
    """``OMP_WAIT_POLICY/GOMP_SPINCOUNT`` at the moment ``import module`` first imports torch (an import spy)."""
    code = ("import os, sys\n"
            "seen = {}\n"
            "class Spy:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' and 'torch' not in seen:\n"
            "            seen['torch'] = f\"{os.environ.get('OMP_WAIT_POLICY')}/{os.environ.get('GOMP_SPINCOUNT')}\"\n"
            "sys.meta_path.insert(0, Spy())\n"
            f"import {module}\n"
            "import precond\n"
            "precond.build_optimizer\n"  # the library's attribute loads torch (if nothing did before)
            "print(seen.get('torch'))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def test_the_entry_point_chooses_the_waiting_policy_before_torch_loads_and_keeps_a_users_choice():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    # what OpenMP saw when it loaded: sleeping waits (a busy machine) or a bounded spin (a quiet one)
    assert _policy_when_torch_loads("precond.run.entry", env) in ("PASSIVE/None", f"None/{threads.BOUNDED_SPIN}")
    assert _policy_when_torch_loads("precond", env) == "None/None"  # the library alone changes nothing
    assert _policy_when_torch_loads("precond.run.entry", {**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE/None"
    assert _policy_when_torch_loads("precond.run.entry", {**env, "GOMP_SPINCOUNT": "5"}) == "None/5"


def test_waiting_sleeps_on_a_busy_machine_and_spins_briefly_on_a_quiet_one(monkeypatch):
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(threads, "busy_cores", lambda interval_s=0.1: 1.0)
    assert threads.quiet_waiting() == "sleep" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(threads, "busy_cores", lambda interval_s=0.1: 0.1)
    assert threads.quiet_waiting() == "bounded spin" and os.environ["GOMP_SPINCOUNT"] == str(threads.BOUNDED_SPIN)
    assert "OMP_WAIT_POLICY" not in os.environ
    assert threads.quiet_waiting() == "user"  # a value already there (here: ours) is kept
