"""Benchmark: BNP step overhead relative to plain SGD (both with momentum 0.9), same run.

Times a full training step (forward, backward, optimizer step; BNP's hooks
included) on the MLP and the CNN, interleaved rounds, medians, ratio to SGD.

    python scripts/bench_bnp.py [--device cpu|cuda] [--rounds 20]
"""
from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians
from torch.nn import functional as F

from precond import build_optimizer
from precond.models import cnn, mlp


def compare(name, make_model, x, y, device, rounds):
    setups = {}
    for label in ("sgd momentum", "bnp (sgd momentum base)"):
        torch.manual_seed(0)
        model = make_model().to(device)
        if label.startswith("bnp"):
            opt = build_optimizer(model.parameters(), "bnp", lr=1e-4, model=model, momentum=0.9, bnp_warmup=0)
        else:
            opt = build_optimizer(model.parameters(), "sgd", lr=1e-4, momentum=0.9)
        setups[label] = (model, opt)

    def step(label):
        model, opt = setups[label]

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)

    times = interleaved_medians({label: (lambda label=label: step(label)) for label in setups}, device, rounds,
                                warmup=3)
    base = times["sgd momentum"]
    n = sum(p.numel() for p in setups["sgd momentum"][0].parameters())
    print(f"\n{name} ({n:,} params, batch {x.shape[0]})")
    print(f"{'optimizer':28s} {'median ms/step':>15s} {'× sgd':>7s}")
    for label in setups:
        t = times[label]
        print(f"{label:28s} {t * 1e3:15.3f} {t / base:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device={device}, torch {torch.__version__}, threads={torch.get_num_threads()}; "
          "training step = forward + backward + optimizer step")
    g = torch.Generator().manual_seed(0)
    for bs in (1, 128):
        x = torch.rand(bs, 1, 8, 8, generator=g).to(device)
        y = torch.randint(0, 10, (bs,), generator=g).to(device)
        compare("MLP 64-64-64-10 on 1x8x8", lambda: mlp((1, 8, 8), 10, "none"), x, y, device, args.rounds)
        compare("CNN [32, 64] on 1x8x8", lambda: cnn((1, 8, 8), 10, "none"), x, y, device, args.rounds)
    x = torch.rand(128, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (128,), generator=g).to(device)
    compare("CNN [32, 64] on 3x32x32", lambda: cnn((3, 32, 32), 10, "none"), x, y, device, args.rounds)


if __name__ == "__main__":
    main()
