"""Claim: at stationarity an adaptive P removes about half of the log-scale ill-conditioning, κ(PᵀHP) ~ κ(H)^½,
while Jacobi scaling and input standardization remove nearly all of it (slope ≈ 0).

Least squares with a linear model (float64) on the synthetic problem with feature scales spread over
``scale_decades`` ∈ {0.5, …, 3} (κ(H) from ≈ 10 to ≈ 1e6), ``--seeds`` independent data draws per spread.
For each problem: the minimizer p* in closed form; AdaGrad/RMSprop/Adam run ``--steps`` minibatch steps
(batch 32) from p*, so their second moments settle to the gradient noise there, and P = D^{-1/2} is read;
Jacobi P = diag(H)^{-1/2}; standardization is the exact reparametrization x → (x − μ)/σ of the linear
model (a block P, bias included). κ(PᵀHP) from dense eigenvalues. Verdict per arm: the least-squares slope
of log κ(PᵀHP) on log κ(H) with a 95 % bootstrap interval over the problems, against ½ (adaptive) or 0.

Steps to target: every arm's optimizer itself (SGD and the three adaptive ones, minibatch 32, the best of
a learning-rate grid, loss evaluated every 10 steps) from a common initial point until the training loss
has lost 99 % of its reducible part, plotted against the κ it sees (κ(H) for SGD, κ(PᵀHP) at stationarity
otherwise). Gradient descent predicts steps ∝ κ; the slope is reported with its interval.

    python scripts/check_kappa_scaling.py --out outputs/results/kappa_scaling
"""
from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
from torch.nn import functional as F

from precond.data import synthetic
from precond.hessian import dense_hessian
from precond.models import linear
from precond.optim import build_optimizer
from precond.reparametrization import bn_reparametrization_matrix
from precond.stationarity import set_flat_params, stationary_preconditioner
from precond.sweep.check_report import fmt, markdown_table, write_check_report
from precond.sweep.stats import loglog_slope
from precond.sweep.verdicts import Verdict

DECADES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
ADAPTIVE = {"adagrad": 0.01, "rmsprop": 1e-3, "adam": 1e-3}  # small steps: stay at p* while the moments settle
EXPECTED = {"adagrad": 0.5, "rmsprop": 0.5, "adam": 0.5, "jacobi": 0.0, "standardization": 0.0}
TOLERANCE = 0.1
RULE = (f"least-squares slope of log κ(PᵀHP) on log κ(H) over the problems with a 95 % percentile bootstrap "
        f"interval; holds when the interval lies inside expected ± {TOLERANCE}, fails when it lies wholly outside, "
        "else inconclusive")
#: steps to target: learning-rate grids (each arm's best is used), budget, evaluation interval, target
LR_GRIDS = {"sgd": (0.1, 0.3, 1.0), "adagrad": (0.1, 0.3, 1.0), "rmsprop": (0.003, 0.01, 0.03),
            "adam": (0.01, 0.03, 0.1)}
MAX_STEPS, EVERY, TARGET_FRACTION, BATCH = 2000, 10, 0.01, 32
STEPS_TOLERANCE = 0.25
STEPS_RULE = (f"slope of log steps-to-target on log κ over every (problem, arm) that reached the target, 95 % "
              f"bootstrap interval; holds when it lies inside 1 ± {STEPS_TOLERANCE} (gradient descent's steps ∝ κ), "
              "fails when wholly outside, else inconclusive")


def kappa(matrix: torch.Tensor) -> float:
    eig = torch.linalg.eigvalsh(matrix)
    return float(eig[-1] / eig[0])


def problem(decades: float, data_seed: int):
    d = synthetic(n_train=1024, n_val=16, n_test=0, features=16, scale_decades=decades, data_seed=data_seed)
    x, y = d.x_train.double(), d.y_train.double()
    torch.manual_seed(data_seed)
    model = linear(d.in_shape, d.num_outputs).double()
    ext = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(ext, y).solution[:, 0]  # [w; b]: the parameter order of nn.Linear
    loss_star = float(((ext @ solution - y[:, 0]) ** 2).mean())
    return model, x, y, solution, loss_star


def preconditioned_kappas(model, x, y, solution, steps: int) -> tuple[float, dict]:
    """κ(H) and κ(PᵀHP) per arm at p*."""
    init = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    set_flat_params(model, solution)
    h = dense_hessian(model, F.mse_loss, [(x, y)])
    out = {}
    for name, lr in ADAPTIVE.items():
        p = stationary_preconditioner(model, F.mse_loss, x, y, name, lr, steps, BATCH)
        out[name] = kappa(p[:, None] * h * p[None, :])
    jacobi = torch.diagonal(h).rsqrt()
    out["jacobi"] = kappa(jacobi[:, None] * h * jacobi[None, :])
    standardize = bn_reparametrization_matrix(model, x, eps=0.0)  # the first layer's block: (x − μ)/σ
    out["standardization"] = kappa(standardize.T @ h @ standardize)
    set_flat_params(model, init)
    return kappa(h), out


def steps_to_target(model, x, y, loss_star: float, name: str, lr: float, seed: int) -> float:
    """Steps until the full training loss is within ``TARGET_FRACTION`` of its reducible part (∞: never)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        loss0 = float(F.mse_loss(twin(x), y))
    target = loss_star + TARGET_FRACTION * (loss0 - loss_star)
    opt = build_optimizer(twin.parameters(), name, lr=lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(1, MAX_STEPS + 1):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=g)
        opt.zero_grad()
        F.mse_loss(twin(x[idx]), y[idx]).backward()
        opt.step()
        if step % EVERY == 0:
            with torch.no_grad():
                loss = float(F.mse_loss(twin(x), y))
            if not math.isfinite(loss):
                return math.inf
            if loss <= target:
                return float(step)
    return math.inf


def plot(path: Path, rows: list[dict], fits: dict, steps: list[dict], steps_fit) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    kh = [r["kappa_h"] for r in rows]
    grid = torch.logspace(math.log10(min(kh)), math.log10(max(kh)), 50)
    for i, (arm, fit) in enumerate(fits.items()):
        color = f"C{i}"
        left.scatter(kh, [r[arm] for r in rows], s=14, color=color, label=f"{arm}: slope {fit.slope:.3f} "
                     f"[{fit.ci[0]:.3f}, {fit.ci[1]:.3f}]")
        left.plot(grid, [math.exp(fit.intercept) * float(k) ** fit.slope for k in grid], color=color, lw=1)
    left.plot(grid, grid, "k:", lw=1, label="κ(PᵀHP) = κ(H)")
    left.plot(grid, grid.sqrt(), "k--", lw=1, label="κ(H)^½")
    left.set(xscale="log", yscale="log", xlabel="κ(H)", ylabel="κ(PᵀHP) at stationarity",
             title="Condition number in z against in p")
    left.legend(fontsize=7)
    for i, arm in enumerate(LR_GRIDS):
        pts = [s for s in steps if s["arm"] == arm and math.isfinite(s["steps"])]
        right.scatter([s["kappa"] for s in pts], [s["steps"] for s in pts], s=16, color=f"C{i}", label=arm)
    if steps_fit is not None:
        ks = [s["kappa"] for s in steps if math.isfinite(s["steps"])]
        g = torch.logspace(math.log10(min(ks)), math.log10(max(ks)), 50)
        right.plot(g, [math.exp(steps_fit.intercept) * float(k) ** steps_fit.slope for k in g], "k-", lw=1,
                   label=f"fit: slope {steps_fit.slope:.2f} [{steps_fit.ci[0]:.2f}, {steps_fit.ci[1]:.2f}]")
    right.set(xscale="log", yscale="log", xlabel="κ the optimizer sees (κ(H) for SGD, κ(PᵀHP) otherwise)",
              ylabel=f"steps to target (best lr, every {EVERY})", title="Steps to target against κ")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/results/kappa_scaling")
    parser.add_argument("--seeds", type=int, default=3, help="independent data draws per spread")
    parser.add_argument("--steps", type=int, default=1500, help="minibatch steps at p* before P is read")
    args = parser.parse_args()
    rows, steps = [], []
    for i, decades in enumerate(DECADES):
        for s in range(args.seeds):
            model, x, y, solution, loss_star = problem(decades, data_seed=100 * i + s)
            kappa_h, kappas = preconditioned_kappas(model, x, y, solution, args.steps)
            rows.append({"decades": decades, "seed": 100 * i + s, "kappa_h": kappa_h, **kappas})
            if s == 0:  # steps to target on one draw per spread
                for arm, grid in LR_GRIDS.items():
                    best = min(steps_to_target(model, x, y, loss_star, arm, lr, seed=0) for lr in grid)
                    steps.append({"decades": decades, "arm": arm, "steps": best,
                                  "kappa": kappa_h if arm == "sgd" else kappas[arm]})
    fits = {arm: loglog_slope([r["kappa_h"] for r in rows], [r[arm] for r in rows]) for arm in EXPECTED}
    verdicts = []
    for arm, fit in fits.items():
        verdicts.append(Verdict(
            f"{arm}: κ(PᵀHP) ∝ κ(H)^{EXPECTED[arm]:g} at stationarity", fit.judge(EXPECTED[arm], TOLERANCE), RULE,
            {"slope": fit.slope, "ci": list(fit.ci), "intercept": fit.intercept, "points": fit.n,
             "expected": EXPECTED[arm], "tolerance": TOLERANCE},
            f"slope {fit.slope:.3f} [{fit.ci[0]:.3f}, {fit.ci[1]:.3f}] over {fit.n} problems (expected "
            f"{EXPECTED[arm]:g} ± {TOLERANCE:g})"))
    reached = [s for s in steps if math.isfinite(s["steps"])]
    steps_fit = loglog_slope([s["kappa"] for s in reached], [s["steps"] for s in reached]) if len(reached) >= 3 \
        else None
    censored = len(steps) - len(reached)
    if steps_fit is None:
        verdicts.append(Verdict("steps to target ∝ κ the optimizer sees", "invalid", STEPS_RULE, {},
                                f"only {len(reached)} runs reached the target"))
    else:
        verdicts.append(Verdict(
            "steps to target ∝ κ the optimizer sees (gradient descent's prediction)",
            steps_fit.judge(1.0, STEPS_TOLERANCE), STEPS_RULE,
            {"slope": steps_fit.slope, "ci": list(steps_fit.ci), "points": steps_fit.n, "censored": censored},
            f"slope {steps_fit.slope:.2f} [{steps_fit.ci[0]:.2f}, {steps_fit.ci[1]:.2f}] over {steps_fit.n} runs "
            f"that reached the target ({censored} did not within {MAX_STEPS} steps)"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "kappa_scaling.png", rows, fits, steps, steps_fit)
    table = markdown_table(["spread (decades)", "data seed", "κ(H)", *EXPECTED],
                           [[r["decades"], r["seed"], fmt(r["kappa_h"]), *(fmt(r[a]) for a in EXPECTED)]
                            for r in rows])
    steps_table = markdown_table(["spread (decades)", *LR_GRIDS],
                                 [[d, *(f"{fmt(s['steps'])} (κ {fmt(s['kappa'])})" for s in steps
                                        if s["decades"] == d)] for d in DECADES])
    intro = (f"Least squares, linear model (16 features + bias), float64, N = 1024; P read after {args.steps} "
             f"minibatch steps (batch {BATCH}) started at the minimizer p*. κ(PᵀHP) from dense eigenvalues.")
    sections = [intro, "## κ(PᵀHP) at stationarity\n\n" + table, "![scaling](kappa_scaling.png)",
                f"## Steps to target (loss within {TARGET_FRACTION:.0%} of its reducible part; best of each arm's lr "
                f"grid {LR_GRIDS}; ∞: not within {MAX_STEPS} steps)\n\n" + steps_table]
    print(write_check_report(out, "kappa_scaling", sections, verdicts))


if __name__ == "__main__":
    main()
