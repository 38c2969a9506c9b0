"""Benchmark: optimizer step time of precond's composed optimizer vs torch.optim, same run.

Table 1: optimizer step only (fixed gradients) on ResNet-18 (11.2M params),
precond vs its torch.optim twin, as a ratio.
Table 2: step time of each penalty relative to the unregularized Adam step (same model).
Table 3: a full gradnorm training step (closure + step) per backend, relative to
one gradient (forward + backward) and to a plain Adam training step, on an MLP
and ResNet-20.

    python scripts/bench_optimizer.py [--device cpu|cuda] [--rounds 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from timing import interleaved_medians, sync

from precond import build_optimizer
from precond.models import mlp, resnet


def _params(device: torch.device) -> list[torch.Tensor]:
    """ResNet-18 (CIFAR, 11.2M parameters) tensors with fixed random gradients."""
    torch.manual_seed(0)
    model = resnet((3, 32, 32), 10, "batchnorm", arch="resnet18").to(device)
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def time_steps(make, device, rounds: int, steps_per_round: int = 5) -> list[float]:
    """Per-round mean step time (s) for an optimizer built by ``make(params)``."""
    params = _params(device)
    opt = make(params)
    for _ in range(3):
        opt.step()
    sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps_per_round):
            opt.step()
        sync(device)
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


def penalty_cases(lr=1e-3, lam=1e-4):
    adam = dict(preconditioner="adam", lr=lr)
    return [
        ("adam (no penalty)", None, lambda ps: build_optimizer(ps, **adam)),
        ("adam + l2(p)", "adam (no penalty)", lambda ps: build_optimizer(ps, **adam, regularization="l2",
                                                                         variable="p", strength=lam)),
        ("adam + l2(z)", "adam (no penalty)", lambda ps: build_optimizer(ps, **adam, regularization="l2",
                                                                         variable="z", strength=lam)),
    ] + [
        (f"adam + l1 {form}({var})", "adam (no penalty)",
         (lambda f, v: lambda ps: build_optimizer(ps, **adam, regularization="l1", variable=v, strength=lam,
                                                  form=f))(form, var))
        for form in ("subgradient", "prox") for var in ("p", "z")
    ]


def _training_step_cases(lam=1e-2):
    base = dict(preconditioner="adam", lr=1e-3)
    rows = [("one gradient (forward+backward)", None), ("adam step (closure + step)", {})]
    for backend in ("finite_difference", "double_backward"):
        for var in ("p", "z"):
            rows.append((f"adam + gradnorm({var}) {backend}",
                         dict(regularization="gradnorm", variable=var, strength=lam, backend=backend)))
    return base, rows


def time_training_steps(model_name, make_model, x, y, device, rounds):
    """Median seconds of a gradient, a plain step and each gradnorm step, interleaved."""
    base, rows = _training_step_cases()
    setups = {}
    for name, reg in rows:
        torch.manual_seed(0)
        model = make_model().to(device)
        opt = None if reg is None else build_optimizer(model.parameters(), **base, **reg,
                                                       buffers=list(model.buffers()))
        setups[name] = (model, opt)

    def one(name):
        model, opt = setups[name]

        def closure():
            model.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if opt is None:
            closure()
        else:
            opt.step(closure)

    results = interleaved_medians({name: (lambda name=name: one(name)) for name, _ in rows}, device, rounds)
    grad_t, step_t = results[rows[0][0]], results[rows[1][0]]
    print(f"\n{model_name}: training step incl. closure, batch {x.shape[0]}")
    print(f"{'step':44s} {'median ms':>10s} {'× gradient':>11s} {'× adam step':>12s}")
    for name, _ in rows:
        t = results[name]
        print(f"{name:44s} {t * 1e3:10.2f} {t / grad_t:11.2f} {t / step_t:12.2f}")


def print_table(title, rows, results):
    print(title)
    print(f"{'optimizer':32s} {'median ms/step':>15s} {'ratio':>8s}")
    for name, base, _ in rows:
        med = statistics.median(results[name]) * 1e3
        ratio = "" if base is None else f"{med / (statistics.median(results[base]) * 1e3):8.2f}"
        print(f"{name:32s} {med:15.2f} {ratio:>8s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    n_params = sum(p.numel() for p in _params(device))
    print(f"device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"{args.rounds} interleaved rounds")
    for title, rows in (
        (f"\n[1] optimizer step vs torch.optim, ResNet-18 ({n_params / 1e6:.1f}M params), fixed gradients", cases()),
        ("\n[2] penalty step time relative to the unregularized Adam step (same model)", penalty_cases()),
    ):
        # interleave: every round times every optimizer once, so drift hits all alike
        results = {name: [] for name, _, _ in rows}
        for _ in range(args.rounds):
            for name, _, make in rows:
                results[name] += time_steps(make, device, rounds=1)
        print_table(title, rows, results)

    print("\n[3] gradient-norm regularization: cost per backend")
    g = torch.Generator().manual_seed(0)
    x_flat = torch.randn(256, 784, generator=g).to(device)
    y = torch.randint(0, 10, (256,), generator=g).to(device)
    time_training_steps("MLP 784-512-512-10 (relu)", lambda: mlp((784,), 10, "none", widths=(512, 512)),
                        x_flat, y, device, args.rounds)
    x_img = torch.randn(32, 3, 32, 32, generator=g).to(device)
    time_training_steps("ResNet-20 (batchnorm)", lambda: resnet((3, 32, 32), 10, "batchnorm", arch="resnet20"),
                        x_img, y[:32], device, args.rounds)


if __name__ == "__main__":
    main()
