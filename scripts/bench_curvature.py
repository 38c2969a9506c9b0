"""Benchmark: cost of a Hessian-vector product relative to one gradient, and of a κ measurement.

Same run, same batches, interleaved rounds, medians:
  - one gradient (forward + backward) = 1.00
  - HVP by double backward, HVP by forward-over-reverse (torch.func)
on the MLP (digits, 64-64-64-10) and on ResNet-20 (CIFAR-shaped batch); then the
wall time of a full κ measurement (p and z, Lanczos, tol 1e-3, ≤100 matvecs,
4 fixed batches of 64) on the MLP after 200 Adam steps; then a pack's κ: J such MLPs (own seeds,
own lr) measured one by one (measure_curvature) against all at once (stacked products,
precond.sweep.pack_curvature), p and z, with the largest relative difference in κ between the two.

    python scripts/bench_curvature.py [--device cpu|cuda] [--rounds 10]
"""
from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians
from torch.nn import functional as F

from precond import build_optimizer
from precond.curvature import measure_curvature
from precond.data import digits
from precond.hessian import HessianOperator, measurement_mode
from precond.models import mlp, resnet


def hvp_costs(name, model, x, y, device, rounds):
    batches = [(x, y)]
    params = [p for p in model.parameters()]
    ops = {mode: HessianOperator(model, F.cross_entropy, batches, hvp_mode=mode)
           for mode in ("double_backward", "forward_over_reverse")}
    v = torch.randn(ops["double_backward"].n, device=device)

    def gradient():
        loss = F.cross_entropy(model(x), y)
        torch.autograd.grad(loss, params)

    jobs = {"gradient (forward+backward)": gradient,
            "HVP double backward": lambda: ops["double_backward"].matvec(v),
            "HVP forward-over-reverse": lambda: ops["forward_over_reverse"].matvec(v)}
    with measurement_mode(model, "train"):  # batch statistics, running statistics untouched
        times = interleaved_medians(jobs, device, rounds)
    base = times["gradient (forward+backward)"]
    print(f"\n{name} ({sum(p.numel() for p in params):,} params, batch {x.shape[0]})")
    print(f"{'operation':32s} {'median ms':>10s} {'× gradient':>11s}")
    for k in jobs:
        t = times[k]
        print(f"{k:32s} {t * 1e3:10.2f} {t / base:11.2f}")


def adam_trained_mlp(data, seed: int, lr: float, device, steps: int = 200):
    """The digits MLP after ``steps`` Adam steps on consecutive batches of 64, and its optimizer."""
    torch.manual_seed(seed)
    model = mlp(data.in_shape, 10, "none").to(device)
    opt = build_optimizer(model.parameters(), "adam", lr=lr)
    for k in range(steps):
        idx = torch.arange(k * 64 % 1200, k * 64 % 1200 + 64, device=device)
        opt.zero_grad()
        F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    return model, opt


def kappa_timing(device):
    data = digits().to(device)
    model, opt = adam_trained_mlp(data, seed=0, lr=3e-3, device=device)
    batches = [(data.x_train[i:i + 64], data.y_train[i:i + 64]) for i in range(0, 256, 64)]
    print(f"\nκ measurement on the MLP ({sum(p.numel() for p in model.parameters()):,} params), "
          "Lanczos, tol 1e-3, max 100 matvecs, 4 batches of 64")
    print(f"{'space':6s} {'seconds':>8s} {'matvecs':>8s} {'converged':>9s} {'lam_max':>10s} "
          f"{'lam_min':>11s} {'kappa':>8s}")
    for space in ("p", "z"):
        r = measure_curvature(model, F.cross_entropy, batches, optimizer=opt, space=space, method="lanczos",
                              max_matvecs=100)
        kappa = "—" if r.kappa is None else f"{r.kappa:.3g}"
        print(f"{space:6s} {r.seconds:8.2f} {r.matvecs:8d} {str(r.converged):>9s} {r.lam_max:10.4g} "
              f"{r.lam_min:11.4g} {kappa:>8s}" + (f" ({r.flag})" if r.flag else ""))


def _trained_members(data, jobs: int, device, steps: int = 200):
    """CurvatureMonitors of ``jobs`` MLPs after ``steps`` Adam steps each (own seed, own lr)."""
    from precond.curvature import CurvatureSettings
    from precond.run.monitors import CurvatureMonitor

    settings = CurvatureSettings(method="lanczos", max_matvecs=100, batches=4, batch_size=64, layers=False)
    monitors = []
    for j in range(jobs):
        model, opt = adam_trained_mlp(data, seed=j, lr=1e-3 * (1 + j % 4), device=device, steps=steps)
        monitors.append(CurvatureMonitor(model, F.cross_entropy, data.x_train, data.y_train, opt, settings, 64,
                                         seed=j))
    return monitors


def pack_kappa_timing(device, jobs: int = 8):
    import time

    from precond.sweep.pack_curvature import measure_together

    data = digits().to(device)
    monitors = _trained_members(data, jobs, device)
    print(f"\nκ of a pack of {jobs} MLPs (64-64, digits, Adam, own seed and lr), Lanczos as above")
    print(f"{'space':6s} {'one by one s':>13s} {'together s':>11s} {'ratio':>7s} {'max rel. diff in κ':>19s}")
    for space in ("p", "z"):
        t0 = time.perf_counter()
        alone = [measure_curvature(m.model, F.cross_entropy, m.batches, optimizer=m.optimizer, space=space,
                                   method="lanczos", max_matvecs=100) for m in monitors]
        t_alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        together = measure_together(monitors, space, "classification")
        t_together = time.perf_counter() - t0
        diff = max(abs(a.lam_max - b.lam_max) / abs(a.lam_max) for a, b in zip(alone, together))
        kappas = [(a.kappa, b.kappa) for a, b in zip(alone, together) if a.kappa is not None and b.kappa is not None]
        if kappas:
            diff = max(diff, max(abs(a - b) / a for a, b in kappas))
        print(f"{space:6s} {t_alone:13.2f} {t_together:11.2f} {t_alone / t_together:6.2f}× {diff:19.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.rand(256, 1, 8, 8, generator=g).to(device)
    y = torch.randint(0, 10, (256,), generator=g).to(device)
    hvp_costs("MLP 64-64-64-10", mlp((1, 8, 8), 10, "none").to(device), x, y, device, args.rounds)
    xi = torch.randn(32, 3, 32, 32, generator=g).to(device)
    hvp_costs("ResNet-20 (batchnorm, train mode)", resnet((3, 32, 32), 10, "batchnorm").to(device), xi, y[:32],
              device, args.rounds)
    kappa_timing(device)
    pack_kappa_timing(device)


if __name__ == "__main__":
    main()
