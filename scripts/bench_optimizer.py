"""Benchmark: optimizer step time of precond's composed optimizer vs torch.optim, same run.

Prints a table of median step times over interleaved rounds (gradients fixed,
so only the optimizer step is timed) and the ratio to the torch baseline.

    python scripts/bench_optimizer.py [--device cpu|cuda] [--rounds 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from precond import build_optimizer
from precond.models import resnet


def _params(device: torch.device) -> list[torch.Tensor]:
    """ResNet-18 (CIFAR, 11.2M parameters) tensors with fixed random gradients."""
    torch.manual_seed(0)
    model = resnet((3, 32, 32), 10, "batchnorm", arch="resnet18").to(device)
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(make, device, rounds: int, steps_per_round: int = 5) -> list[float]:
    """Per-round mean step time (s) for an optimizer built by ``make(params)``."""
    params = _params(device)
    opt = make(params)
    for _ in range(3):
        opt.step()
    _sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps_per_round):
            opt.step()
        _sync(device)
        times.append((time.perf_counter() - t0) / steps_per_round)
    return times


def cases(lr=1e-3, wd=1e-2):
    """(name, baseline name, factory) rows; the first row of each block is its baseline."""
    return [
        ("torch AdamW (foreach)", None, lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, foreach=True)),
        ("precond adam + l2(z)", "torch AdamW (foreach)",
         lambda ps: build_optimizer(ps, "adam", lr=lr, regularization="l2", variable="z", strength=wd)),
        ("torch Adam(wd) (foreach)", None, lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=wd, foreach=True)),
        ("precond adam + l2(p)", "torch Adam(wd) (foreach)",
         lambda ps: build_optimizer(ps, "adam", lr=lr, regularization="l2", variable="p", strength=wd)),
        ("torch SGD momentum (foreach)", None, lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, foreach=True)),
        ("precond sgd momentum", "torch SGD momentum (foreach)",
         lambda ps: build_optimizer(ps, "sgd", lr=lr, momentum=0.9)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = cases()
    # interleave: every round times every optimizer once, so drift hits all alike
    results = {name: [] for name, _, _ in rows}
    for _ in range(args.rounds):
        for name, _, make in rows:
            results[name] += time_steps(make, device, rounds=1)
    n_params = sum(p.numel() for p in _params(device))
    print(f"optimizer step on ResNet-18 ({n_params / 1e6:.1f}M params), device={device}, "
          f"torch {torch.__version__}, threads={torch.get_num_threads()}, {args.rounds} rounds × 5 steps")
    print(f"{'optimizer':32s} {'median ms/step':>15s} {'ratio':>8s}")
    for name, base, _ in rows:
        med = statistics.median(results[name]) * 1e3
        ratio = "" if base is None else f"{med / (statistics.median(results[base]) * 1e3):8.2f}"
        print(f"{name:32s} {med:15.2f} {ratio:>8s}")


if __name__ == "__main__":
    main()
