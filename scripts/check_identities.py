"""The theory's two exact identities, checked on fresh problems per seed (they are true by construction, so they are
reported as identities, never counted as evidence):

* **AdamW is L2 in z.** Adam is gradient descent on z with p = P z, P = diag(1/(√v̂ + ε)) (up to the step's
  momentum); a decay applied to z, z ← (1 − ηλ) z, is p ← (1 − ηλ) p: torch.optim.AdamW's decoupled weight decay.
  precond's Adam with ``regularization=l2, variable=z`` is compared with ``torch.optim.AdamW`` over a
  trajectory; Adam with L2 in p (torch's ``Adam(weight_decay=…)``) is the control that must differ.
* **BNP is the BatchNorm reparametrization.** BNP's step is P Pᵀ g with P the block reparametrization
  ``u = W̃ (h − μ)/σ + b̃`` built from its running statistics (μ, σ): one step of BNP equals ``η P Pᵀ ∇L``.

Each on ``--seeds`` seeds (problem, initialization, batches), float64.

    python scripts/check_identities.py --out outputs/results/identities
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.nn import functional as F

from precond import build_optimizer
from precond.models import mlp
from precond.reparametrization import bn_reparametrization_matrix, bnp_moments
from precond.sweep.check_report import markdown_table, write_judged_check_report
from precond.sweep.verdicts import Claim

STEPS, LR, DECAY, TOLERANCE = 200, 0.01, 0.1, 1e-10


def _problem(seed: int):
    """A badly scaled two-layer regression problem in float64 (features over 2 decades)."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(64, 8, generator=g, dtype=torch.float64) * torch.logspace(0, -2, 8, dtype=torch.float64)
    return model, x, torch.randn(64, 2, generator=g, dtype=torch.float64)


def _trajectory(seed: int, make) -> torch.Tensor:
    model, x, y = _problem(seed)
    opt = make(model.parameters())
    out = []
    for k in range(STEPS):
        idx = slice((k * 16) % 64, (k * 16) % 64 + 16)
        opt.zero_grad()
        F.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return torch.stack(out)


def adamw_run(seed: int) -> dict:
    z = _trajectory(seed, lambda ps: build_optimizer(ps, "adam", lr=LR, regularization="l2", variable="z",
                                                     strength=DECAY))
    adamw = _trajectory(seed, lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=DECAY, foreach=False))
    in_p = _trajectory(seed, lambda ps: torch.optim.Adam(ps, lr=LR, weight_decay=DECAY, foreach=False))
    return {"status": "completed", "z_vs_adamw": float((z - adamw).abs().max()),
            "p_vs_adamw": float((in_p - adamw).abs().max())}


def bnp_run(seed: int) -> dict:
    """The largest |BNP's step − η P Pᵀ g| over 20 steps after a 3-step start, P from BNP's own statistics."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64) * torch.logspace(0, -2, 6, dtype=torch.float64) + 3.0
    y = torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(seed)
    model = mlp((6,), 3, "none", widths=(5, 4)).double()
    opt = build_optimizer(model.parameters(), "bnp", lr=0.1, model=model, momentum=0.0, bnp_warmup=0)
    worst, size = 0.0, 0.0
    for k in range(23):
        idx = slice((k * 16) % 64, (k * 16) % 64 + 16)
        before = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        grad = torch.cat([q.grad.reshape(-1) for q in model.parameters()])
        opt.step()
        if k < 3:
            continue
        moments, eps = bnp_moments(opt, model)  # the step commits this batch's moments first
        p = bn_reparametrization_matrix(model, None, eps=eps, moments=moments)
        step = before - torch.cat([q.detach().reshape(-1) for q in model.parameters()])
        worst = max(worst, float((step - 0.1 * p @ p.T @ grad).abs().max()))
        size = max(size, float(step.abs().max()))
    return {"status": "completed", "step_vs_PPtg": worst, "step_size": size}


def claims() -> list[Claim]:
    return [Claim(f"AdamW is Adam with L2 in z: precond's adam + l2 (variable z) follows torch.optim.AdamW over "
                  f"{STEPS} steps (max |Δp| ≤ {TOLERANCE:g})", {"arm": "adamw", "metric": "z_vs_adamw"}, 0.0,
                  identity=True, tolerance=TOLERANCE, scale="difference"),
            Claim("control: Adam with L2 in p (torch's Adam weight_decay) is not AdamW (max |Δp| > 1e-3)",
                  {"arm": "adamw", "metric": "p_vs_adamw"}, 1e-3, direction="higher", identity=True,
                  scale="difference"),
            Claim(f"BNP is the BatchNorm reparametrization: its step is η P Pᵀ ∇L with P from its running "
                  f"statistics (max |Δ| ≤ {TOLERANCE:g})", {"arm": "bnp", "metric": "step_vs_PPtg"}, 0.0,
                  identity=True, tolerance=TOLERANCE, scale="difference")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/results/identities")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    runs = {"adamw": {s: adamw_run(s) for s in seeds}, "bnp": {s: bnp_run(s) for s in seeds}}
    rows = [[s, f"{runs['adamw'][s]['z_vs_adamw']:.1e}", f"{runs['adamw'][s]['p_vs_adamw']:.2g}",
             f"{runs['bnp'][s]['step_vs_PPtg']:.1e}", f"{runs['bnp'][s]['step_size']:.2g}"] for s in seeds]
    sections = [f"float64, {args.seeds} seeds; Adam lr {LR}, decay {DECAY}, {STEPS} minibatch steps; BNP lr 0.1, "
                "20 steps after a 3-step start. Identities are verified on every seed and not counted as evidence.",
                markdown_table(["seed", "max |adam+L2(z) − AdamW|", "max |adam+L2(p) − AdamW| (control)",
                                "max |BNP step − η P Pᵀ g|", "max |BNP step|"], rows)]
    print(write_judged_check_report(Path(args.out), "identities", sections, claims(), runs, seeds))


if __name__ == "__main__":
    main()
