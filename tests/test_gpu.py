"""GPU checks (make test-gpu): the same numbers on CUDA as on the CPU, and a CLI run on the GPU."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from precond import build_optimizer
from precond.curvature import measure_curvature
from tests.conftest import read_summary, run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _trajectory(device, make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).double().to(device)
    x = torch.randn(32, 6, dtype=torch.float64).to(device)
    y = torch.randn(32, 2, dtype=torch.float64).to(device)
    opt = make(model.parameters())
    out = []
    for _ in range(30):
        def closure():
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
        out.append(torch.cat([p.detach().flatten().cpu() for p in model.parameters()]))
    return torch.stack(out)


@pytest.mark.parametrize("kwargs", [
    dict(preconditioner="adam", regularization="l2", variable="z", strength=0.1),
    dict(preconditioner="rmsprop", centered=True, momentum=0.5),
    dict(preconditioner="adam", regularization="l1", variable="z", strength=0.05, form="prox"),
    dict(preconditioner="adam", regularization="gradnorm", variable="z", strength=0.05, backend="double_backward"),
])
def test_cuda_trajectory_matches_cpu(kwargs):
    cpu = _trajectory("cpu", lambda ps: build_optimizer(ps, lr=0.05, **kwargs))
    gpu = _trajectory("cuda", lambda ps: build_optimizer(ps, lr=0.05, **kwargs))
    torch.testing.assert_close(gpu, cpu, rtol=1e-9, atol=1e-11)


def test_adamw_parity_on_cuda():
    ours = _trajectory("cuda", lambda ps: build_optimizer(ps, "adam", lr=0.05, regularization="l2", variable="z",
                                                          strength=0.1))
    ref = _trajectory("cuda", lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1))
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)


def test_curvature_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    cpu = measure_curvature(model, F.mse_loss, [(x, y)], method="lanczos", tol=1e-10)
    gpu = measure_curvature(model.cuda(), F.mse_loss, [(x.cuda(), y.cuda())], method="lanczos", tol=1e-10)
    assert gpu.lam_max == pytest.approx(cpu.lam_max, rel=1e-8)
    assert gpu.lam_min == pytest.approx(cpu.lam_min, rel=1e-6)


@pytest.mark.parametrize("overrides", [
    ("preconditioner=adam", "curvature=lanczos"),
    ("model=cnn", "dataset=digits", "preconditioner=bnp", "batch_size=1"),
    ("model=resnet", "dataset=digits", "normalization=batchnorm", "regularization=gradnorm"),
])
def test_cli_runs_on_the_gpu(tmp_path, overrides):
    run_cli(tmp_path, "device=cuda", "steps=200", "eval_every=100", *overrides)
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "completed" and summary["device"].startswith("cuda") and "gpu" in summary


def test_a_packed_sweep_on_the_gpu_equals_the_same_jobs_alone(tmp_path):
    """hydra/launcher=packed on CUDA, float64: every job equals its solo run (as on the CPU)."""
    from tests.test_packing import SMALL, _sweep, assert_same_runs

    sweep = ["device=cuda", "preconditioner=sgd,adam", "seed=0,1", "lr=0.01,0.05", *SMALL]
    assert_same_runs(_sweep(tmp_path, "alone", "basic", *sweep), _sweep(tmp_path, "packed", "packed", *sweep))


def test_the_fast_path_options_train_a_cnn_on_the_gpu(tmp_path):
    """bf16 autocast + channels_last + data on the device: the run completes and learns."""
    from tests.conftest import run_in_process

    assert run_in_process(["device=cuda", "model=cnn", "dataset=digits", "precision=bf16", "channels_last=true",
                           "steps=200", "eval_every=100", "target.metric=val/acc", "target.value=0.5",
                           f"hydra.run.dir={tmp_path}"]) == 0
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["val/acc"] > 0.5
