"""No result is lost: unique run dirs, refusal of a foreign dir, graceful interrupts, failures that
stay inside their job, and a report that survives damaged files."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from precond.sweep.report import compare
from precond.sweep.runs import load_runs
from tests.conftest import ROOT, read_metrics, read_summary, run_cli, wait_for_records
from tests.conftest import run_in_process as _in_process


def test_two_runs_in_the_same_second_get_two_directories(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    args = [sys.executable, "-m", "precond.run.entry", "steps=5", "eval_every=5", "progress=false",
            f"hydra.run.dir={tmp_path}/r/${{now:%H-%M-%S}}_${{name}}_${{run_id:}}"]
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    dirs = sorted((tmp_path / "r").iterdir())
    assert len(dirs) == 2, dirs
    for d in dirs:
        assert [r["step"] for r in read_metrics(d)] == [0, 5]  # no interleaved records


def test_a_directory_holding_another_run_is_refused_and_left_untouched(tmp_path):
    run_dir = tmp_path / "run"
    assert _in_process(["steps=10", "eval_every=5", f"hydra.run.dir={run_dir}"]) == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != "train.log"}
    assert _in_process(["steps=20", "eval_every=5", f"hydra.run.dir={run_dir}"]) == 2
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != "train.log"}
    assert after == before


def test_a_completed_run_is_not_redone(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _in_process(["steps=10", "eval_every=5", f"hydra.run.dir={run_dir}"]) == 0
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    assert _in_process(["steps=10", "eval_every=5", f"hydra.run.dir={run_dir}"]) == 0
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics


def test_an_unfinished_attempt_is_kept_beside_the_new_one(tmp_path):
    run_dir = tmp_path / "run"
    assert _in_process(["steps=10", "eval_every=5", f"hydra.run.dir={run_dir}"]) == 0
    summary = read_summary(run_dir)
    summary["status"] = "interrupted"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    old_metrics = (run_dir / "metrics.jsonl").read_text()
    assert _in_process(["steps=10", "eval_every=5", f"hydra.run.dir={run_dir}"]) == 0
    assert (run_dir / "metrics.jsonl.attempt1").read_text() == old_metrics
    assert json.loads((run_dir / "summary.json.attempt1").read_text())["status"] == "interrupted"
    assert read_summary(run_dir)["status"] == "completed"
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 5, 10]




def test_sigterm_writes_an_interrupted_summary_and_finishes_the_offline_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "HOME": str(tmp_path), "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    proc = subprocess.Popen([sys.executable, "-m", "precond.run.entry", "steps=1000000", "eval_every=200",
                             "progress=false", "logger=wandb", "seed=7", f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_records(run_dir / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "interrupted at step" in err
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["seed"] == 7
    assert summary["steps"] >= summary["last_eval_step"] >= 400 and "seed=7" in summary["overrides"]
    records = read_metrics(run_dir)
    assert summary["val/loss"] == records[-1]["val/loss"]
    assert set(torch.load(run_dir / "model.pt", weights_only=True)) == {"1.weight", "1.bias"}
    assert (run_dir / "optimizer.pt").exists()
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(offline[0])], capture_output=True,
                          text=True, env=env, timeout=120)
    assert sync.returncode == 0
    log = (offline[0] / "logs" / "debug.log").read_text()
    assert "finishing run" in log and "got exitcode: 1" in log  # finished with an exit record, not abandoned


def test_a_job_raising_a_plain_exception_does_not_stop_the_sweep(tmp_path, monkeypatch):
    from precond.run import entry as train
    from precond.run import loop

    real = loop.train

    def flaky(model, optimizer, *args, **kwargs):
        if optimizer.param_groups[0]["lr"] == 0.02:
            raise RuntimeError("simulated bug in one job")
        return real(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(train, "train", flaky)
    sweep = tmp_path / "sweep"
    code = _in_process(["-m", "steps=10", "eval_every=5", "lr=0.01,0.02,0.03", f"hydra.sweep.dir={sweep}"])
    assert code == 1  # the sweep ends non-zero because a job failed...
    statuses = [read_summary(sweep / str(i))["status"] for i in range(3)]
    assert statuses == ["completed", "failed", "completed"]  # ...after running every job
    assert "RuntimeError: simulated bug" in read_summary(sweep / "1")["error"]
    assert "Traceback" in (sweep / "1" / "error.txt").read_text()
    assert "1 failed" in (sweep / "comparison.md").read_text()


def test_ctrl_c_in_a_sweep_writes_the_table_of_what_finished(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "precond.run.entry", "-m", "steps=20,1000000", "eval_every=10",
                             "progress=false", f"hydra.sweep.dir={sweep}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_records(sweep / "1" / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err
    assert read_summary(sweep / "0")["status"] == "completed"
    assert read_summary(sweep / "1")["status"] == "interrupted"
    table = (sweep / "comparison.md").read_text()
    assert "steps=20" in table and "(1 interrupted)" in table


def test_report_skips_and_names_damaged_runs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    run_cli(tmp_path, "steps=20", "eval_every=10", "lr=0.01,0.02,0.03", multirun=True)
    with open(sweep / "0" / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "val/lo')  # a write cut short by a full disk
    (sweep / "2" / "summary.json").write_text('{"status": "compl')
    problems: list[str] = []
    runs = load_runs(sweep, problems)
    assert [r.path.name for r in runs] == ["0", "1"]
    assert [r["step"] for r in runs[0].metrics] == [0, 10, 20]
    assert any("2: skipped" in p for p in problems) and any("dropped 1" in p for p in problems)
    table = compare(sweep, quiet=True)
    assert "lr=0.01" in table and "lr=0.03" not in table
    assert "skipped, unreadable summary.json" in (sweep / "comparison.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--metric", "val/nonsense"], "error: --metric 'val/nonsense' is not in these runs' summaries"),
    ([], "error: no readable run directories"),
])
def test_report_bad_input_is_one_line(tmp_path, args, message):
    target = tmp_path / "empty"
    target.mkdir()
    if args:
        run_cli(tmp_path, "steps=10", "eval_every=5")
        target = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "precond.sweep.report", str(target), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(message) and "Traceback" not in proc.stderr


#: bad values the library objects refuse before training, each with the key the message must name
BAD_VALUES = [
    (("preconditioner.betas=[1.5,0.999]",), "preconditioner.betas"),
    (("preconditioner.betas=[0.9]",), "preconditioner.betas"),
    (("preconditioner.eps=-1",), "preconditioner.eps"),
    (("preconditioner=adagrad", "preconditioner.lr_decay=-1"), "preconditioner.lr_decay"),
    (("preconditioner=adagrad", "preconditioner.initial_accumulator_value=-1"),
     "preconditioner.initial_accumulator_value"),
    (("preconditioner=rmsprop", "preconditioner.alpha=1.5"), "preconditioner.alpha"),
    (("preconditioner=sgd", "preconditioner.momentum=-0.5"), "preconditioner.momentum"),
    (("preconditioner=sgd", "preconditioner.dampening=2"), "preconditioner.dampening"),
    (("preconditioner=sgd", "preconditioner.nesterov=maybe"), "preconditioner.nesterov"),
    (("lr=inf",), "lr"),
    (("lr=0",), "lr"),
    (("lr=fast",), "lr"),
    (("seed=1.5",), "seed"),
    (("seed=-1",), "seed"),
    (("steps=0",), "steps"),
    (("batch_size=0",), "batch_size"),
    (("eval_every=-3",), "eval_every"),
    (("eval_batch_size=0",), "eval_batch_size"),
    (("target.value=low",), "target.value"),
    (("target.value=nan",), "target.value"),
    (("target.metric=val/los",), "target.metric"),
    (("target.metric=val/acc",), "target.metric"),  # regression data log no accuracy
    (("divergence_factor=-1",), "divergence_factor"),
    (("divergence_factor=1",), "divergence_factor"),
    (("dtype=float16",), "dtype"),
    (("device=tpu",), "device"),
    (("curvature=lanczos", "curvature.batches=0"), "curvature.batches"),
    (("curvature=lanczos", "curvature.max_matvecs=0"), "curvature.max_matvecs"),
    (("curvature=lanczos", "curvature.tol=0"), "curvature.tol"),
    (("curvature=lanczos", "curvature.every=0"), "curvature.every"),
    (("curvature=lanczos", "curvature.batch_size=-2"), "curvature.batch_size"),
    (("curvature=lanczos", "curvature.method=exact"), "curvature.method"),
    (("curvature=lanczos", "curvature.hvp_mode=fast"), "curvature.hvp_mode"),
    (("curvature=lanczos", "curvature.layers=sometimes"), "curvature.layers"),
    (("curvature=dense", "model=cnn", "dataset=digits", "model.channels=[64,64]"), "curvature.method"),
    (("regularization=l2", "regularization.strength=-1"), "regularization.strength"),
    (("regularization=l2", "regularization.strength=inf"), "regularization.strength"),
    (("regularization=l2", "regularization.variable=w"), "regularization.variable"),
    (("regularization=l1", "regularization.form=lasso"), "regularization.form"),
    (("regularization=gradnorm", "regularization.r=0"), "regularization.r"),
    (("regularization=gradnorm", "regularization.backend=magic"), "regularization.backend"),
    (("regularization.name=l3",), "regularization.name"),
    (("normalization.name=groupnorm",), "normalization.name"),
    (("schedule=step", "schedule.gamma=0"), "schedule.gamma"),
    (("schedule=step", "schedule.step_size=0"), "schedule.step_size"),
    (("schedule=warmup", "schedule.warmup_steps=0"), "schedule.warmup_steps"),
    (("schedule=cosine", "schedule.min_factor=2"), "schedule.min_factor"),
    (("logger=wandb", "logger.mode=sometimes"), "logger.mode"),
    (("dataset.task=ranking",), "dataset.task"),
    (("dataset.correlation=1.5",), "dataset.correlation"),
    (("dataset=digits", "model=mlp", "dataset.val_fraction=0.95", "dataset.test_fraction=0.1"),
     "dataset.val_fraction"),
    (("dataset=digits", "model=mlp", "dataset.val_fraction=0"), "dataset.val_fraction"),
    (("dataset=digits", "model=mlp", "dataset.test_fraction=-0.1"), "dataset.test_fraction"),
    (("model=mlp", "model.activation=swish"), "model.activation"),
    (("model=resnet", "dataset=digits", "model.arch=resnet50"), "model.arch"),
    (("model=cnn",), "model"),
    (("model=linear", "normalization=batchnorm"), "normalization"),
    (("model=mlp", "normalization=batchnorm", "batch_size=1"), "batch_size"),
    (("batch_size=100000",), "batch_size"),
    (("preconditioner=bnp", "curvature=lanczos"), "curvature.spaces"),
    (("preconditioner=bnp", "regularization=l2", "regularization.variable=z"), "regularization.variable"),
    (("preconditioner=bnp", "model=mlp", "normalization=batchnorm"), "normalization"),
    (("preconditioner=bnp", "preconditioner.rho=0"), "preconditioner.rho"),
    (("precision=fp16",), "precision"),
    (("precision=bf16", "dtype=float64"), "precision"),
    (("channels_last=yes",), "channels_last"),
    (("compile=1",), "compile"),
    (("channels_last=true",), "channels_last"),  # vector inputs have no memory format to change
]


@pytest.mark.parametrize("overrides,key", BAD_VALUES, ids=[",".join(o) for o, _ in BAD_VALUES])
def test_bad_values_are_refused_before_training_with_one_line(tmp_path, capsys, overrides, key):
    run_dir = tmp_path / "run"
    code = _in_process(["steps=50", "eval_every=10", *overrides, f"hydra.run.dir={run_dir}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}:"), err
    assert "Traceback" not in err
    if "curvature=dense" in overrides:  # the dense Hessian's size is known once the model is built
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
        assert not (run_dir / "metrics.jsonl").exists() or (run_dir / "metrics.jsonl").read_text() == ""
    else:
        assert not run_dir.exists()  # nothing written: the corrected command may use the same dir


def test_sixty_bad_values_are_covered():
    assert len(BAD_VALUES) >= 60
