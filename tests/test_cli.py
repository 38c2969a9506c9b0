"""The entry point as a user runs it: files of a run, sweeps, divergence, bad input, W&B offline."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import read_metrics, read_summary

FAST = ("steps=60", "eval_every=20")


def test_single_run_leaves_config_metrics_summary(cli, tmp_path):
    cli(*FAST, "preconditioner=rmsprop", "lr=0.01", "seed=3")
    run = tmp_path / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["lr"] == 0.01 and config["preconditioner"]["name"] == "rmsprop"  # resolved
    records = read_metrics(run)
    assert [r["step"] for r in records] == [0, 20, 40, 60]
    for key in ("train/loss", "train/batch_loss", "val/loss", "lr", "time/train_s"):
        assert key in records[-1]
    assert "train/batch_loss" not in records[0]  # no step taken yet
    assert records[-1]["time/train_s"] >= records[1]["time/train_s"] > 0
    assert "test/loss" in records[-1] and "test/loss" not in records[1]
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["seed"] == 3
    for key in ("steps_to_target", "seconds_to_target", "device", "torch", "git_commit", "val/loss"):
        assert key in summary
    assert summary["torch"] == torch.__version__
    assert summary["val/loss"] == pytest.approx(records[-1]["val/loss"])


def test_classification_logs_accuracy_and_target_in_accuracy(here, tmp_path):
    here(*FAST, "dataset=digits", "model=mlp", "target.metric=val/acc", "target.value=0.5")
    summary = read_summary(tmp_path / "run")
    assert 0.5 <= summary["val/acc"] <= 1.0
    assert summary["steps_to_target"] is not None and summary["steps_to_target"] <= 60


def test_multirun_survives_a_diverging_job_and_writes_the_comparison(here, tmp_path):
    here("steps=40", "eval_every=20", "preconditioner=sgd", "lr=1000,0.1", multirun=True)
    sweep = tmp_path / "sweep"
    diverged, ok = read_summary(sweep / "0"), read_summary(sweep / "1")
    assert diverged["status"] == "diverged" and diverged["steps"] <= 20
    assert ok["status"] == "completed"
    table = (sweep / "comparison.md").read_text()
    assert "lr=1000" in table and "lr=0.1" in table
    assert (sweep / "comparison.png").stat().st_size > 1000


def test_compare_preconditioners_experiment_smoke(cli, tmp_path):
    """The main job (make run), shrunk: a tuned experiment through the real CLI."""
    proc = cli("experiment=compare_preconditioners", "steps=20", "eval_every=10", "curvature.every=20",
               "hydra.sweeper.grid.lr=[0.01,0.1]", "hydra.sweeper.arms.sgd.grid.lr=[0.1,1.0]",
               "hydra.sweeper.arms.sgd_momentum.grid={lr:[0.1,1.0],preconditioner.momentum:[0.9]}",
               "hydra.sweeper.tuning_seeds=[0,1]", "hydra.sweeper.confirmation_seeds=[100,101,102,103,104,105,106,107]",
               "hydra.sweeper.stages=null")  # 8 seeds: the fewest on which its 6 primary claims can reach p < 0.05
    sweep = tmp_path / "sweep"
    tuning = [read_summary(p.parent) for p in (sweep / "tuning").rglob("summary.json")]
    confirmation = [read_summary(p.parent) for p in (sweep / "confirmation").rglob("summary.json")]
    assert len(tuning) == 6 * 2 * 2 and {s["stage"] for s in tuning} == {"tuning"}  # 6 arms × 2 points × 2 seeds
    assert len(confirmation) == 6 * 8 and {s["stage"] for s in confirmation} == {"confirmation"}
    assert {s["arm"] for s in confirmation} == {"sgd", "sgd_momentum", "adagrad", "rmsprop", "adam", "adam_beta1_0"}
    assert {s["choices"]["preconditioner"] for s in confirmation} == {"sgd", "adagrad", "rmsprop", "adam"}
    assert {s["seed"] for s in confirmation} == set(range(100, 108))
    # two problem instances: the confirmation seeds alternate between data draws 0 and 1
    assert {(s["seed"], next(o for o in s["overrides"] if o.startswith("dataset.data_seed=")))
            for s in confirmation if s["arm"] == "adam"} == {(100 + i, f"dataset.data_seed={i % 2}") for i in range(8)}
    assert all(s.get("packed", 0) > 1 for s in tuning)  # the experiment packs its jobs
    # κ is measured where the claims are judged (confirmation), not on every grid point (tuning_overrides)
    assert all("curvature/p/lam_max" not in s for s in tuning) and all("curvature/p/lam_max" in s for s in confirmation)
    assert len(json.loads((sweep / "verdicts.json").read_text())) == 8
    assert "## Verdicts" in (sweep / "comparison.md").read_text() and "curvature/z/kappa" in (
        sweep / "comparison.md").read_text()
    # the end of the output is a short summary: what was compared, a line per verdict, where the report is
    summary = proc.stdout[proc.stdout.index("compare_preconditioners: a tuned comparison"):].strip().splitlines()
    assert len(summary) <= 30 and summary[-1].startswith(f"report: {sweep / 'comparison.md'}")
    assert "What was compared. 6 arms (sgd, sgd_momentum, adagrad, rmsprop, adam, adam_beta1_0)" in summary[1]
    assert "; 20 steps per run; target: val/loss ≤ 0.02." in summary[1]  # the budget, not where a run stopped
    assert sum(line.startswith("  ") for line in summary) == 8


# every key's refusals are tested in process (test_schema.py, test_reliability.py); these two go through
# the shell: one refused before anything is written, one found only when the data are read
@pytest.mark.parametrize("override,key", [
    (("lr=-1",), "lr"),
    (("dataset=mnist", "model=cnn", "dataset.root=/nonexistent"), "dataset.root"),
])
def test_bad_values_fail_with_one_line_naming_the_key(cli, tmp_path, override, key):
    proc = cli(*override, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {key}:"), proc.stderr
    assert "Traceback" not in proc.stderr
    if key == "dataset.root":  # found only when the data are read: the run dir records the failure
        assert read_summary(tmp_path / "run")["status"] == "failed"
    else:  # refused before anything is written: the corrected command may use the same dir
        assert not (tmp_path / "run").exists()


def test_unknown_group_option_lists_the_choices(here):
    proc = here("preconditioner=lbfgs", check=False)
    assert proc.returncode != 0
    assert "preconditioner" in proc.stderr and "adam" in proc.stderr and "rmsprop" in proc.stderr


def test_wandb_online_without_key_falls_back_to_offline_and_syncs(cli, tmp_path):
    proc = cli(*FAST, "logger=wandb", "logger.mode=online")
    assert proc.stdout.count("no W&B API key found") + proc.stderr.count("no W&B API key found") == 1
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("*.wandb")), "the offline run must hold its data file"
    wandb_cli = [sys.executable, "-c", "import sys; from wandb.cli.cli import cli; sys.exit(cli())"]
    sync = subprocess.run([*wandb_cli, "sync", "--dry-run", str(offline[0])], capture_output=True, text=True,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert sync.returncode == 0, sync.stderr
    assert offline[0].name in sync.stdout + sync.stderr


IMPORT_PROBE = """
import sys
from precond.run.entry import main

def loaded(*argv):
    sys.argv = ['precond-train', *argv, 'progress=false', 'logger=none']
    try:
        main()
    except SystemExit as stop:
        assert not stop.code, stop.code
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    return sorted(m for m in ('torch._dynamo', 'matplotlib', 'wandb') if m in sys.modules)

print('MODULES', loaded('steps=30', 'eval_every=10', 'checkpoint_every=5', 'schedule=cosine', 'hydra.run.dir=RUN'))
print('MODULES', loaded('-m', 'hydra/launcher=packed', 'preconditioner=sgd,adam', 'regularization=l2',
             'regularization.variable=p,z', 'steps=30', 'eval_every=10', 'checkpoint_every=5',
             'hydra.sweep.dir=SWEEP'))
"""


def test_a_run_imports_neither_dynamo_nor_matplotlib_nor_wandb_and_a_sweep_only_matplotlib(tmp_path):
    """What a run does not use is not imported: torch._dynamo (about 1 s) only with compile=true,
    wandb only with logger=wandb, matplotlib only where a plot is drawn (a sweep's report). The
    single run takes checkpoints, an lr schedule and the optimizer's state dict; the packed sweep
    mixes chains."""
    code = IMPORT_PROBE.replace("RUN", str(tmp_path / "run")).replace("SWEEP", str(tmp_path / "sweep"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, sweep = [line[len("MODULES "):] for line in proc.stdout.splitlines() if line.startswith("MODULES ")]
    assert single == "[]" and sweep == "['matplotlib']", (single, sweep)
    assert (tmp_path / "sweep" / "comparison.png").exists()


@pytest.mark.parametrize("overrides", [
    ("regularization=l1", "regularization.variable=z", "regularization.form=prox", "regularization.strength=0.05",
     "regularization.policy=all"),
    ("regularization=gradnorm", "regularization.variable=z", "regularization.backend=double_backward",
     "model=mlp", "normalization=batchnorm"),
])
def test_penalties_run_from_the_cli_and_log_their_metrics(here, tmp_path, overrides):
    here(*FAST, *overrides)
    last = read_metrics(tmp_path / "run")[-1]
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    if "regularization.form=prox" in overrides:  # λ‖p‖₁ over every tensor (policy=all), from the saved model
        params = [t for k, t in weights.items() if k.endswith(("weight", "bias"))]
        assert last["reg/penalty"] == pytest.approx(0.05 * sum(float(t.abs().sum()) for t in params), rel=1e-5)
        zeros = sum(int((t == 0).sum()) for t in params) / sum(t.numel() for t in params)
        assert last["reg/sparsity"] == pytest.approx(zeros) and zeros > 0, "a strong prox zeroes weights exactly"
    else:  # gradnorm: a smooth penalty never lands on exact zeros
        assert last["reg/penalty"] > 0 and last["reg/sparsity"] == 0.0
    assert read_summary(tmp_path / "run")["status"] == "completed"


def test_adam_lowers_kappa_in_z_and_input_normalization_lowers_it_in_p(here, tmp_path):
    common = ("preconditioner=adam", "curvature=lanczos", "steps=500", "eval_every=100", "curvature.every=500")
    here(*common, root=tmp_path / "raw")
    here(*common, "normalization=input", root=tmp_path / "std")
    raw = read_metrics(tmp_path / "raw" / "run")
    std = read_metrics(tmp_path / "std" / "run")
    first, last = raw[0], raw[-1]
    assert "curvature/z/kappa" not in first and first["curvature/p/kappa"] > 1e3  # no P before the first step
    assert last["curvature/p/converged"] and last["curvature/z/converged"]
    assert last["curvature/z/kappa"] < last["curvature/p/kappa"] / 10
    assert std[-1]["curvature/p/kappa"] < last["curvature/p/kappa"] / 100
    assert last["time/curvature_s"] > 0 and "curvature/layer/1/kappa_hidden" in last
    assert read_summary(tmp_path / "raw" / "run")["curvature/z/kappa"] == last["curvature/z/kappa"]


def test_analyze_curvature_script_reads_a_finished_run(cli, tmp_path):
    cli("steps=100", "eval_every=50")
    proc = subprocess.run([sys.executable, "scripts/analyze_curvature.py", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line[:2] in ("p ", "z ")}
    assert float(rows["z"][3]) < float(rows["p"][3])  # κ in z below κ in p after Adam steps
    assert (tmp_path / "run" / "curvature.png").stat().st_size > 1000


def test_bnp_at_batch_size_one_trains_the_mlp_on_the_default_data(here, tmp_path):
    here("preconditioner=bnp", "batch_size=1", "model=mlp", "steps=400", "eval_every=200")  # its default lr
    records = read_metrics(tmp_path / "run")
    assert read_summary(tmp_path / "run")["status"] == "completed"
    assert records[-1]["val/loss"] < 0.5 * records[0]["val/loss"]


def test_a_sweep_prints_no_line_per_launched_job_unless_asked(cli):
    quiet = cli("seed=0,1", "steps=5", multirun=True)
    assert "#0 : " not in quiet.stdout and "[job 0] status=completed" in quiet.stdout
    loud = cli("seed=0,1", "steps=5", "hydra.verbose=[hydra._internal.core_plugins.basic_launcher]", multirun=True)
    assert "#0 : " in loud.stdout and "#1 : " in loud.stdout


def test_a_tuned_sweep_prints_one_line_per_batch_and_its_runs_lines_go_to_their_train_log(cli, tmp_path):
    tuned = ["hydra/sweeper=tuned", "steps=20", "eval_every=10", "preconditioner=sgd",
             "hydra.sweeper.arms={a:{grid:{lr:[0.1,0.3]}}}", "hydra.sweeper.tuning_seeds=[0,1]",
             "hydra.sweeper.confirmation_seeds=[5,6,7]"]
    quiet = cli(*tuned, multirun=True).stdout
    assert "status=" not in quiet and "params on" not in quiet
    assert "tuning done: 4 runs: 4 completed;" in quiet and "confirmation done: 3 runs: 3 completed;" in quiet
    logs = sorted((tmp_path / "sweep").rglob("train.log"))
    assert len(logs) == 7 and all("status=completed" in p.read_text() for p in logs)
    loud = cli(*tuned, "hydra.verbose=precond", f"hydra.sweep.dir={tmp_path}/loud", multirun=True).stdout
    assert loud.count("status=completed") == 7
