"""Claim: an adaptive P settles as its moment estimates do, and κ(PᵀHP) settles well below κ(H);
normalization (BatchNorm, BNP) keeps the network's curvature better conditioned along the way.

Two problems, ``--seeds`` seeds each, minibatch 32, float64, curvature measured every ``EVERY`` steps:

* **Least squares** on the synthetic problem (16 features over 2 decades, κ(H) ≈ 1e4): SGD, AdaGrad,
  RMSprop and Adam. H is constant; κ(PᵀHP), λmax and λmin of PᵀHP follow P (dense eigenvalues).
* **A ReLU MLP** (8 → 8 → 8 → 4) on the badly scaled classification problem of ``kappa_plus``: plain with
  SGD, BatchNorm with SGD, and BNP (its base step SGD); κ⁺ of the GGN with the analytic invariances
  projected out (for BNP in its own z: P is the block reparametrization built from BNP's running
  statistics), and λmax of H.

Least squares runs to stationarity (‖p − p*‖/‖p*‖ ≤ 1 %, p* in closed form, and κ(PᵀHP) moving by at most
10 % per 1,000 steps) and a third as long again;
its claims are about that stationary window: the spread max/min of κ(PᵀHP) there (settled when below
1.5), its level against κ(H) and against its own early value (the theory's story: κ(PᵀHP) falls as
the second moment settles). The EMA methods are the theory's case (primary); AdaGrad, whose P keeps
the whole history, is judged apart (exploratory). For the MLP: the level of κ⁺ over the last quarter
against the plain network's. All judged with the paired rule over seeds. κ⁺ near 1e7 sits at the cut
1e-7·λmax below which eigenvalues count as null: the spectrum reaches down to the cut, and such a κ⁺ is
a floor, not a measurement.

    python scripts/check_kappa_trajectory.py --out outputs/results/kappa_trajectory
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch.nn import functional as F

from precond import build_optimizer
from precond.curvature import flat_P
from precond.data import synthetic
from precond.ggn import dense_ggn
from precond.hessian import dense_hessian, measurement_mode
from precond.invariance import projected_kappa_plus, relu_rescalings, scale_invariances, stack, translation_invariances
from precond.models import linear, mlp
from precond.reparametrization import bn_reparametrization_matrix, bnp_moments
from precond.spectrum import NULL_RTOL
from precond.sweep.check_report import fmt, markdown_table, write_judged_check_report
from precond.sweep.verdicts import Claim

LINEAR_ARMS = {"sgd": 0.1, "adagrad": 0.1, "rmsprop": 3e-3, "adam": 0.01}
MLP_ARMS = {"plain": ("none", "sgd", 0.05), "batchnorm": ("batchnorm", "sgd", 0.05), "bnp": ("none", "bnp", 0.05)}
LINEAR_STEPS, MLP_STEPS, EVERY, BATCH = 3000, 2000, 100, 32
#: least squares runs to stationarity, within MAX_LINEAR_STEPS: ‖p − p*‖/‖p*‖ at most STATIONARY (p* in closed
#: form) and P settled too — κ(PᵀHP) moved by at most DRIFT (relative) over the last DRIFT_EVALS evaluations
#: (1,000 steps: the time constant of β₂ = 0.999). The iterate converges before its second-moment estimate does.
STATIONARY, DRIFT, DRIFT_EVALS, MAX_LINEAR_STEPS = 0.01, 0.1, 10, 20000
SETTLED = 1.5
#: a κ⁺ within 2× of 1/NULL_RTOL is set by the eigenvalue cut, not measured: a comparison there is invalid
FLOOR = 0.5 / NULL_RTOL


def last_quarter(values: list) -> list:
    return values[len(values) * 3 // 4:]


def linear_run(name: str, lr: float, seed: int) -> dict:
    """One least-squares trajectory, run to stationarity: from the first evaluation at which the iterate is within
    ``STATIONARY`` (relative) of the closed-form minimizer p* and κ(PᵀHP) has drifted by at most ``DRIFT`` over the
    last ``DRIFT_EVALS`` evaluations — step T — on for T/3 more steps, so that the judged window (the evaluations
    after T) is the last quarter of the run. A run that does not get there by
    ``MAX_LINEAR_STEPS`` stops at the cap, and its window is the last quarter of the cap (``stationary_step``
    null). SGD, the reference curve, runs ``LINEAR_STEPS``."""
    d = synthetic(n_train=1024, n_val=16, n_test=0, features=16, scale_decades=2.0, data_seed=seed)
    x, y = d.x_train.double(), d.y_train.double()
    torch.manual_seed(seed)
    model = linear(d.in_shape, d.num_outputs).double()
    h = dense_hessian(model, F.mse_loss, [(x, y)])  # constant: the loss is quadratic
    eig_h = torch.linalg.eigvalsh(h)
    with_bias = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)  # p = [w, b], as parameters()
    p_star = torch.linalg.lstsq(with_bias, y.reshape(x.shape[0], -1)).solution.T.flatten()
    opt = build_optimizer(model.parameters(), name, lr=lr)
    g = torch.Generator().manual_seed(seed)
    steps, kz, lmax, lmin, dist = [], [], [], [], []
    cap, stationary = (LINEAR_STEPS if name == "sgd" else MAX_LINEAR_STEPS), None
    step = 0
    while step < cap:
        step += 1
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=g)
        opt.zero_grad()
        F.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
        if step % EVERY == 0:
            p = flat_P(opt, list(model.parameters()))
            a = h if p is None else p[:, None] * h * p[None, :]
            eig = torch.linalg.eigvalsh(a)
            steps.append(step), kz.append(float(eig[-1] / eig[0])), lmax.append(float(eig[-1]))
            lmin.append(float(eig[0]))
            flat = torch.cat([q.detach().flatten() for q in model.parameters()])
            dist.append(float((flat - p_star).norm() / p_star.norm()))
            settled = len(kz) > DRIFT_EVALS and abs(kz[-1] / kz[-1 - DRIFT_EVALS] - 1) <= DRIFT
            if stationary is None and name != "sgd" and dist[-1] <= STATIONARY and settled:
                stationary = step
                cap = min(cap, step + max(step // 3, 4 * EVERY))
    window = [k for s_, k in zip(steps, kz) if s_ > stationary] if stationary else last_quarter(kz)
    return {"status": "completed", "steps": steps, "kappa_z": kz, "lam_max": lmax, "lam_min": lmin, "dist": dist,
            "kappa_h": float(eig_h[-1] / eig_h[0]), "tail_max": max(window), "tail_spread": max(window) / min(window),
            "tail_median": sorted(window)[len(window) // 2], "first_kappa": kz[0], "stationary_step": stationary,
            "end_dist": dist[-1], "last_step": step}


def mlp_data():
    d = synthetic(task="classification", n_train=256, n_val=8, n_test=0, features=8, classes=4, scale_decades=1.0,
                  mean_offset=1.0, noise=0.5, data_seed=0)
    return d.x_train.double(), d.y_train


def mlp_kappa(model, opt, x, y, bnp: bool) -> tuple[float, float]:
    """κ⁺ of the GGN (z-space for BNP) with the analytic invariances projected, and λmax of H."""
    n = sum(p.numel() for p in model.parameters())
    nulls = stack(translation_invariances(model, softmax_output=True) + scale_invariances(model)
                  + relu_rescalings(model), n)
    with measurement_mode(model, "train"):
        g = dense_ggn(model, F.cross_entropy, [(x, y)])
        lam_max = float(torch.linalg.eigvalsh(dense_hessian(model, F.cross_entropy, [(x, y)]))[-1])
    if bnp:
        moments, eps = bnp_moments(opt, model)
        p = bn_reparametrization_matrix(model, None, eps=eps, moments=moments)
        g, nulls = p.T @ g @ p, torch.linalg.solve(p, nulls)
    k = projected_kappa_plus(g, nulls)["kappa_plus"]
    return (math.inf if k is None else k), lam_max


def mlp_run(arm: str, seed: int, x, y) -> dict:
    norm, name, lr = MLP_ARMS[arm]
    torch.manual_seed(seed)
    model = mlp((x.shape[1],), 4, norm, widths=(8, 8)).double()
    extra = {"model": model, "bnp_warmup": 10} if name == "bnp" else {}
    opt = build_optimizer(model.parameters(), name, lr=lr, momentum=0.9, **extra)
    g = torch.Generator().manual_seed(seed)
    steps, kappas, lmax = [], [], []
    for step in range(1, MLP_STEPS + 1):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if step % (2 * EVERY) == 0:
            k, lm = mlp_kappa(model, opt, x, y, bnp=name == "bnp")
            steps.append(step), kappas.append(k), lmax.append(lm)
    with torch.no_grad(), measurement_mode(model, "eval"):
        loss = float(F.cross_entropy(model(x), y))
    tail = last_quarter(kappas)
    return {"status": "completed", "steps": steps, "kappa": kappas, "lam_max": lmax, "loss": loss,
            "tail_kappa": sorted(tail)[len(tail) // 2]}


def claims() -> list[Claim]:
    """The EMA methods (RMSprop, Adam) are the theory's case: their P forgets the transient, so at stationarity
    κ(PᵀHP) should have settled below κ(H). AdaGrad is judged apart (exploratory): its P sums every squared
    gradient since step 0, keeps the transient, and its steps shrink like 1/√t, so it need not be stationary."""
    out = []
    for arm in ("rmsprop", "adam", "adagrad"):
        role = "exploratory" if arm == "adagrad" else "primary"
        out.append(Claim(f"least squares, {arm}: at stationarity κ(PᵀHP) has settled (max/min below {SETTLED})",
                         {"arm": arm, "metric": "tail_spread"}, SETTLED, scale="ratio", margin=1.0, role=role))
        out.append(Claim(f"least squares, {arm}: at stationarity κ(PᵀHP) stays below κ(H)",
                         {"arm": arm, "metric": "tail_max"}, {"arm": arm, "metric": "kappa_h"}, scale="ratio",
                         role=role))
        out.append(Claim(f"least squares, {arm}: κ(PᵀHP) falls as P settles (median at stationarity below its value "
                         f"at step {EVERY})", {"arm": arm, "metric": "tail_median"},
                         {"arm": arm, "metric": "first_kappa"}, scale="ratio", role=role))
    out.append(Claim("MLP: BatchNorm's κ⁺ of the GGN over the last quarter is below the plain network's", "batchnorm",
                     "plain", metric="tail_kappa", scale="ratio", floor=FLOOR))
    out.append(Claim("MLP: BNP's κ⁺(PᵀGP) in its own z over the last quarter is below the plain network's κ⁺(G)",
                     "bnp", "plain", metric="tail_kappa", scale="ratio", floor=FLOOR))
    return out


def plot(path: Path, linear_runs: dict, mlp_runs: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = [(axes[0, 0], linear_runs, "kappa_z", "least squares: κ(PᵀHP) (κ(H) dotted)"),
              (axes[0, 1], linear_runs, "lam_min", "least squares: λmin (solid) and λmax (dashed) of PᵀHP"),
              (axes[1, 0], mlp_runs, "kappa", "MLP: κ⁺ of the GGN (BNP: of PᵀGP), invariances projected"),
              (axes[1, 1], mlp_runs, "lam_max", "MLP: λmax of H")]
    for ax, runs, key, title in panels:
        for i, (arm, by_seed) in enumerate(runs.items()):
            for j, r in enumerate(by_seed.values()):
                vals = [v if math.isfinite(v) else float("nan") for v in r[key]]
                ax.plot(r["steps"], vals, color=f"C{i}", lw=0.8, alpha=0.7, label=arm if j == 0 else None)
                if key == "lam_min":
                    ax.plot(r["steps"], r["lam_max"], color=f"C{i}", lw=0.8, ls="--", alpha=0.7)
        if key == "kappa_z":
            kh = next(iter(next(iter(runs.values())).values()))["kappa_h"]
            ax.axhline(kh, color="k", ls=":", lw=1)
            ax.axhline(kh ** 0.5, color="k", ls="-.", lw=1, label="√κ(H)")
        ylabel = {"kappa_z": "κ(PᵀHP)", "lam_min": "eigenvalue of PᵀHP", "kappa": "κ⁺", "lam_max": "λmax(H)"}[key]
        ax.set(yscale="log", xscale="log" if runs is linear_runs else "linear", xlabel="step", ylabel=ylabel,
               title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/results/kappa_trajectory")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    linear_runs = {arm: {s: linear_run(arm, lr, s) for s in seeds} for arm, lr in LINEAR_ARMS.items()}
    x, y = mlp_data()
    mlp_runs = {arm: {s: mlp_run(arm, s, x, y) for s in seeds} for arm in MLP_ARMS}
    runs = {**{a: {s: {k: v for k, v in r.items() if not isinstance(v, list)} for s, r in by.items()}
               for a, by in linear_runs.items()},
            **{a: {s: {k: v for k, v in r.items() if not isinstance(v, list)} for s, r in by.items()}
               for a, by in mlp_runs.items()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "kappa_trajectory.png", linear_runs, mlp_runs)

    def med(values):
        values = sorted(values)
        return values[len(values) // 2]

    def stationary(by: dict) -> str:
        reached = [r["stationary_step"] for r in by.values() if r["stationary_step"] is not None]
        return f"{len(reached)} of {len(by)}" + (f", median step {med(reached)}" if reached else "")

    linear_rows = [[arm, fmt(med([r["kappa_h"] for r in by.values()])),
                    fmt(med([r["kappa_z"][0] for r in by.values()])), stationary(by),
                    fmt(med([r["end_dist"] for r in by.values()]), 2),
                    fmt(med([r["tail_median"] for r in by.values()])),
                    fmt(med([r["tail_max"] for r in by.values()])), fmt(med([r["tail_spread"] for r in by.values()]))]
                   for arm, by in linear_runs.items()]
    mlp_rows = [[arm, MLP_ARMS[arm][1], fmt(med([r["kappa"][0] for r in by.values()])),
                 fmt(med([r["tail_kappa"] for r in by.values()])), fmt(med([r["lam_max"][-1] for r in by.values()])),
                 fmt(med([r["loss"] for r in by.values()]), 4)] for arm, by in mlp_runs.items()]
    sections = [f"Medians over {len(seeds)} seeds (data draw and initialization for least squares, initialization "
                f"for the MLP); minibatch {BATCH}, float64; learning rates {LINEAR_ARMS} and "
                f"{ {a: v[2] for a, v in MLP_ARMS.items()} } (momentum 0.9 for the MLP). Least squares runs to "
                f"stationarity: from the first evaluation with ‖p − p*‖/‖p*‖ ≤ {STATIONARY} (p* in closed form) and "
                f"κ(PᵀHP) within {DRIFT:.0%} of its value {DRIFT_EVALS * EVERY} steps before (P has settled too), "
                f"step T, on for T/3 more steps; the claims read that window. A run that is not stationary by "
                f"{MAX_LINEAR_STEPS} steps is judged on the last quarter of the cap. SGD is the reference curve "
                f"({LINEAR_STEPS} steps, not judged). AdaGrad is judged apart (exploratory): its P sums every "
                "squared gradient since the start, so it keeps the transient.",
                markdown_table(["least squares", "κ(H)", f"κ(PᵀHP) at step {EVERY}", "stationary (seeds)",
                                "‖p − p*‖/‖p*‖ at the end", "median κ(PᵀHP) at stationarity",
                                "max κ(PᵀHP) there", "max/min there"], linear_rows),
                markdown_table(["MLP", "optimizer", f"κ⁺ at step {2 * EVERY}", "last-quarter median κ⁺",
                                "λmax(H) at the end", "final loss"], mlp_rows),
                "![trajectory](kappa_trajectory.png)"]
    print(write_judged_check_report(out, "kappa_trajectory", sections, claims(), runs, seeds))


if __name__ == "__main__":
    main()
