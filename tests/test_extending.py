"""The extension route (docs/extending.md): the example package installs into a temporary location and its
preconditioner runs in a tuned comparison with κ in z, using only the commands the guide gives; its
preconditioner matches torch.optim.Adamax."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "precond_adamax"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package installed (pip, as docs/extending.md says) into a temporary site directory; the
    source is copied first so that the build leaves nothing in the repository."""
    tmp = tmp_path_factory.mktemp("extension")
    source = tmp / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--target", str(target), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def _env(site: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "PRECOND_THREADS": "1"}


def test_an_installed_preconditioner_runs_in_a_tuned_comparison_with_kappa_in_z(site, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "precond.run.entry", "experiment=adamax_vs_adam",
                           f"hydra.sweep.dir={sweep}", "progress=false"], cwd=tmp_path, env=_env(site),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdicts = json.loads((sweep / "verdicts.json").read_text())
    assert [v["claim"] for v in verdicts] == ["adamax lowers the condition number it trains on below κ(H)"]
    assert verdicts[0]["verdict"] == "holds"  # judged on its κ in z (invalid if the z values were missing)
    summaries = [json.loads(p.read_text()) for p in (sweep / "confirmation" / "adamax").rglob("summary.json")]
    assert len(summaries) == 6
    assert all(s["choices"]["preconditioner"] == "adamax" for s in summaries)
    assert all(s["curvature/z/kappa"] > 0 for s in summaries)


def test_an_unknown_option_lists_the_installed_ones(site, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "precond.run.entry", "preconditioner=adamaxx", "steps=5",
                           f"paths.output_root={tmp_path}"], cwd=tmp_path, env=_env(site), capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    # Hydra's list of the group's options holds the installed one ('adamaxx', the typo, would match a bare
    # "adamax"), and so does precond's own did-you-mean line, which reads the installed config packages too
    assert "Available options in 'preconditioner':; adagrad; adam; adamax; bnp;" in proc.stderr
    assert "did you mean preconditioner=adamax or adam? preconditioner options: adagrad, adam, adamax, bnp" \
        in proc.stderr


PARITY = """
import torch
from torch.nn import functional as F

from precond.optim import build_optimizer

torch.manual_seed(0)
model = torch.nn.Linear(6, 3).double()
twin = torch.nn.Linear(6, 3).double()
twin.load_state_dict(model.state_dict())
x, y = torch.randn(30, 6, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64)
ours = build_optimizer(model.parameters(), "adamax", lr=0.01, betas=(0.8, 0.99))  # found through its entry point
ref = torch.optim.Adamax(twin.parameters(), lr=0.01, betas=(0.8, 0.99), foreach=False)
for k in range(10):
    idx = torch.arange(3 * k, 3 * k + 3)
    for mdl, opt in ((model, ours), (twin, ref)):
        opt.zero_grad()
        F.mse_loss(mdl(x[idx]), y[idx]).backward()
        opt.step()
for a, b in zip(model.parameters(), twin.parameters()):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
assert ours.preconditioner_operator(list(model.parameters())).diagonal() is not None  # P = D^(-1/2) is read
print("parity ok")
"""


def test_the_example_preconditioner_matches_torch_adamax(site, tmp_path):
    """In a subprocess with the example installed: importing it here would register its settings class in this
    test process for every later test."""
    proc = subprocess.run([sys.executable, "-c", PARITY], cwd=tmp_path, env=_env(site), capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "parity ok" in proc.stdout, proc.stderr[-2000:]


def test_a_broken_installed_extension_fails_in_one_line_naming_its_entry_point(tmp_path):
    dist = tmp_path / "site" / "bad_ext-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-ext\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[precond.preconditioners]\nbad = bad_ext_missing.module\n")
    proc = subprocess.run([sys.executable, "-m", "precond.run.entry", "steps=3", f"paths.output_root={tmp_path}"],
                          cwd=tmp_path, env=_env(tmp_path / "site"), capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert ("entry point precond.preconditioners:bad: expected an importable 'bad_ext_missing.module' — "
            "ModuleNotFoundError") in proc.stderr


MODEL_MODULE = '''
import math
from dataclasses import dataclass

from torch import nn

from precond.models import ModelSpec
from precond.settings import Int, setting


@dataclass(frozen=True)
class TinyModel(ModelSpec):
    width: int = setting(Int(lo=1, hi=64), 4)

    def normalizations(self):
        return ("none",)

    def build(self, in_shape, num_outputs, normalization="none"):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), self.width), nn.Tanh(),
                             nn.Linear(self.width, num_outputs))
'''


def test_an_installed_model_and_its_config_group_train_and_its_keys_are_checked(tmp_path):
    """The same route for models: a module under ``precond.models`` and a config package under ``precond.configs``
    (written here as an installed distribution would be)."""
    site = tmp_path / "site"
    package = site / "tiny_ext"
    (package / "conf" / "model").mkdir(parents=True)
    (package / "__init__.py").write_text(MODEL_MODULE)
    (package / "conf" / "__init__.py").write_text("")
    (package / "conf" / "model" / "tiny.yaml").write_text(
        "_target_: tiny_ext.TinyModel\nwidth: 4\n"
        "default_lr: {sgd: 0.1, adagrad: 0.1, rmsprop: 0.01, adam: 0.01, bnp: 0.01, full_matrix: 0.01, "
        "kronecker: 0.01}\n")
    dist = site / "tiny_ext-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-ext\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[precond.models]\ntiny = tiny_ext\n\n[precond.configs]\n"
                                           "tiny_ext = tiny_ext.conf\n")
    run = subprocess.run([sys.executable, "-m", "precond.run.entry", "model=tiny", "preconditioner=kronecker",
                          "steps=20", f"hydra.run.dir={tmp_path}/run", "progress=false"], cwd=tmp_path,
                         env=_env(site), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["choices"]["model"] == "tiny"
    assert summary["parameters"] == 32 * 4 + 4 + 4 * 1 + 1  # synthetic: 32 features (linear: 33 parameters), 1 output
    bad = subprocess.run([sys.executable, "-m", "precond.run.entry", "model=tiny", "model.width=0", "steps=5",
                          f"hydra.run.dir={tmp_path}/bad"], cwd=tmp_path, env=_env(site), capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "model.width: expected an integer in [1, 64], got 0" in bad.stderr
