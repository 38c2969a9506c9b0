"""Claims: the exponent q of a preconditioner ``M = (second moment)^(-q)`` sets how much ill-conditioning it
removes at stationarity, ``κ(PᵀHP) ∝ κ(H)^(1−q)``, on the part of the ill-conditioning its structure can
represent: the scale part for a diagonal P, all of it for a full-matrix or Kronecker P on a linear layer.

Least squares with a linear model (16 features + bias, one output, float64, N = 1024, noise σ = 0.1, so the
gradient noise at the minimizer is homoscedastic and its second moment is proportional to H). Two kinds of
ill-conditioned inputs, each over ``spread`` ∈ {0.5, …, 3} decades of eigenvalue spread and ``--seeds`` data
draws per spread:

* **scale**: independent features whose standard deviations spread over the decades (H nearly diagonal);
* **correlation**: unit-variance features whose correlation matrix has eigenvalues spread over the decades
  (diag(H) constant: all the ill-conditioning is off the diagonal).

For each problem: the minimizer p* in closed form; each preconditioner accumulates ``--steps`` minibatch
gradients (batch 32) at p* (a running sum, AdaGrad-style, lr 1e-8 so p stays at p*, ε = 1e-16 so the second
moment alone decides), then P is read from the optimizer as an operator and κ(PᵀHP) computed from dense
eigenvalues. Verdicts: the least-squares slope of log κ(PᵀHP) on log κ(H) with a 95 % bootstrap interval over
the problems, against its prediction ± 0.1 (holds inside, fails wholly outside, else inconclusive).

* the exponent law: the diagonal P with q ∈ {¼, ½, ¾, 1} on the scale problems and the full-matrix P with the
  same q on the correlation problems, predicted slope 1 − q (q = 0 is P = I: slope 1 by construction, reported
  as an identity, not as evidence);
* structure against the kind of ill-conditioning (q = ½): the diagonal P on the correlation problems predicted
  slope 1 (it cannot represent correlation), the Kronecker and full P predicted ½ on both kinds.

Steps to target: each q = ½ preconditioner trained from a common start on every problem (EMA β₂ = 0.999, best
of an lr grid, minibatch 32) until its distance to p* has shrunk to 5 % of the start (the loss would be
dominated by the high-curvature directions; the distance waits for the slowest, which κ speaks about). Judged
as structure: the slope of log steps on log κ(H), diagonal minus matrix P over the same problems (paired
bootstrap): above 0.1 on correlation ill-conditioning (the diagonal P slows down faster), within ± 0.3 on
scale ill-conditioning (both represent it).

    python scripts/check_exponent_law.py --out outputs/results/exponent_law
"""
from __future__ import annotations

import argparse
import copy
import math
import random
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from precond.hessian import dense_hessian
from precond.optim import build_optimizer
from precond.stationarity import flat_params, set_flat_params
from precond.sweep.check_report import fmt, markdown_table, write_check_report
from precond.sweep.stats import loglog_slope
from precond.sweep.verdicts import Verdict

SPREADS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
KINDS = ("scale", "correlation")
POWERS = (0.0, 0.25, 0.5, 0.75, 1.0)
FEATURES, N, NOISE, BATCH = 16, 1024, 0.1, 32
TOLERANCE = 0.1
RULE = (f"least-squares slope of log κ(PᵀHP) on log κ(H) over the problems with a 95 % percentile bootstrap "
        f"interval; holds when the interval lies inside the prediction ± {TOLERANCE}, fails when it lies wholly "
        "outside, else inconclusive")
#: the stationary read: a running sum at p*, a step too small to move p, and ε out of the way
STATIONARY = {"lr": 1e-8, "eps": 1e-16}
#: (arm, preconditioner name, its keywords for a running-sum second moment with power q)
ARMS = {"diagonal": ("adagrad", {}), "kronecker": ("kronecker", {"beta2": None}),
        "full_matrix": ("full_matrix", {"beta2": None})}
#: steps to target: the q = ½ arms as they train (EMA second moments), learning-rate grids, budget
TRAIN = {"diagonal": ("rmsprop", {"alpha": 0.999}), "kronecker": ("kronecker", {"beta2": 0.999}),
         "full_matrix": ("full_matrix", {"beta2": 0.999})}
LR_GRID = (0.003, 0.01, 0.03, 0.1)
MAX_STEPS, EVERY, TARGET_FRACTION = 3000, 10, 0.05
STEPS_MARGIN = 0.1
STEPS_RULE = (f"the difference of slopes of log steps-to-target on log κ(H), diagonal minus matrix P, over the same "
              f"problems, 95 % paired bootstrap interval (problems resampled): on correlation ill-conditioning holds "
              f"when the interval lies above {STEPS_MARGIN} (the diagonal P slows down faster), fails when it lies "
              f"below it; on scale ill-conditioning (both represent it) holds when it lies inside "
              f"± {STEPS_MARGIN * 3:g}, "
              "fails when wholly outside; else inconclusive")


def inputs(kind: str, spread: float, seed: int) -> torch.Tensor:
    """``N × FEATURES`` zero-mean inputs whose covariance has eigenvalues spread over ``spread`` decades, on the
    diagonal (scale) or in a random rotation rescaled to unit variances (correlation)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N, FEATURES, generator=g, dtype=torch.float64)
    spectrum = torch.logspace(0, -spread, FEATURES, dtype=torch.float64)
    if kind == "scale":
        return u * spectrum.sqrt()
    q, _ = torch.linalg.qr(torch.randn(FEATURES, FEATURES, generator=g, dtype=torch.float64))
    cov = (q * spectrum) @ q.T
    d = cov.diagonal().rsqrt()
    cov = d[:, None] * cov * d[None, :]
    return u @ torch.linalg.cholesky(cov).T


def problem(kind: str, spread: float, seed: int):
    """Linear least squares: the model at a common start, data, the minimizer p* and its loss."""
    x = inputs(kind, spread, seed)
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(FEATURES, 1, generator=g, dtype=torch.float64)
    y = x @ w + NOISE * torch.randn(N, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Linear(FEATURES, 1).double()
    ext = torch.cat([x, torch.ones(N, 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(ext, y).solution[:, 0]  # [w; b]: nn.Linear's parameter order
    return model, x, y, solution, float(((ext @ solution - y[:, 0]) ** 2).mean())


def kappa(matrix: torch.Tensor) -> float:
    eig = torch.linalg.eigvalsh((matrix + matrix.T) / 2)
    return float(eig[-1] / eig[0])


def stationary_P(model: nn.Module, x, y, name: str, steps: int, **hyper) -> torch.Tensor:
    """The dense P of preconditioner ``name`` after ``steps`` minibatch gradients at the model's point."""
    twin = copy.deepcopy(model)
    opt = build_optimizer(twin.parameters(), name, **STATIONARY, **hyper)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, N, (BATCH,), generator=g)
        opt.zero_grad()
        F.mse_loss(twin(x[idx]), y[idx]).backward()
        opt.step()
    return opt.preconditioner_operator(list(twin.parameters())).dense()


def steps_to_target(model, x, y, solution: torch.Tensor, name: str, lr: float, hyper: dict) -> float:
    """Steps until the distance to the minimizer has shrunk to ``TARGET_FRACTION`` of its start, ``‖p − p*‖ ≤
    f·‖p₀ − p*‖`` (∞: never). The distance, not the loss: the loss is dominated by the high-curvature directions,
    the distance waits for the slowest one, which is what κ speaks about."""
    twin = copy.deepcopy(model)
    target = TARGET_FRACTION * float((flat_params(twin) - solution).norm())
    opt = build_optimizer(twin.parameters(), name, lr=lr, **hyper)
    g = torch.Generator().manual_seed(1)
    for step in range(1, MAX_STEPS + 1):
        idx = torch.randint(0, N, (BATCH,), generator=g)
        opt.zero_grad()
        F.mse_loss(twin(x[idx]), y[idx]).backward()
        opt.step()
        if step % EVERY == 0:
            distance = float((flat_params(twin) - solution).norm())
            if not math.isfinite(distance):
                return math.inf
            if distance <= target:
                return float(step)
    return math.inf


def measure(kind: str, spread: float, seed: int, steps: int) -> dict:
    """κ(H) and κ(PᵀHP) of every (arm, q) at p* on one problem."""
    model, x, y, solution, _ = problem(kind, spread, seed)
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    set_flat_params(model, solution)
    h = dense_hessian(model, F.mse_loss, [(x, y)])
    row = {"kind": kind, "spread": spread, "seed": seed, "kappa_h": kappa(h)}
    for arm, (name, extra) in ARMS.items():
        for q in POWERS:
            if q != 0.5 and not ((arm == "diagonal" and kind == "scale") or (arm == "full_matrix"
                                                                           and kind == "correlation")):
                continue
            p = stationary_P(model, x, y, name, steps, power=q, **extra)
            row[(arm, q)] = kappa(p.T @ h @ p)
    set_flat_params(model, start)
    return row


def _ols_slope(x: list, y: list) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def paired_slope_difference(kh: list, a: list, b: list, reps: int = 2000, seed: int = 0):
    """Slope of log a on log κ(H) minus that of log b, with the 95 % interval of a bootstrap that resamples the
    problems (each keeps its pair), so that what the two arms share cancels."""
    lx, la, lb = [math.log(v) for v in kh], [math.log(v) for v in a], [math.log(v) for v in b]
    estimate = _ols_slope(lx, la) - _ols_slope(lx, lb)
    rng, diffs = random.Random(seed), []
    while len(diffs) < reps:
        idx = [rng.randrange(len(lx)) for _ in lx]
        if len({lx[i] for i in idx}) > 1:
            xs = [lx[i] for i in idx]
            diffs.append(_ols_slope(xs, [la[i] for i in idx]) - _ols_slope(xs, [lb[i] for i in idx]))
    diffs.sort()
    return estimate, (diffs[int(0.025 * reps)], diffs[int(math.ceil(0.975 * reps)) - 1])


def steps_verdict(steps: list, matrix_arm: str, kind: str) -> Verdict:
    """Structure on tuned speed: does the diagonal P's steps-to-target grow faster with κ(H) than the matrix P's?"""
    problems = sorted({(s["spread"], s["seed"]) for s in steps})
    table = {(s["spread"], s["seed"], s["arm"]): s for s in steps}
    pairs = [(table[(d, sd, "diagonal")], table[(d, sd, matrix_arm)]) for d, sd in problems]
    kept = [(a, b) for a, b in pairs if math.isfinite(a["steps"]) and math.isfinite(b["steps"])]
    claim = (f"structure on speed, {kind} ill-conditioning: the diagonal P's steps to target grow with κ(H) "
             + ("faster than " if kind == "correlation" else "as ")
             + f"the {matrix_arm} P's")
    if len(kept) < 4:
        return Verdict(claim, "invalid", STEPS_RULE, {}, f"only {len(kept)} problems where both reached the target")
    est, (lo, hi) = paired_slope_difference([a["kappa_h"] for a, _ in kept], [a["steps"] for a, _ in kept],
                                            [b["steps"] for _, b in kept])
    if kind == "correlation":
        state = "holds" if lo > STEPS_MARGIN else "fails" if hi < STEPS_MARGIN else "inconclusive"
    else:
        band = 3 * STEPS_MARGIN
        state = "holds" if -band < lo and hi < band else "fails" if lo > band or hi < -band else "inconclusive"
    return Verdict(claim, state, STEPS_RULE,
                   {"difference": est, "ci": [lo, hi], "problems": len(kept), "censored": len(pairs) - len(kept)},
                   f"slope difference {est:.2f} [{lo:.2f}, {hi:.2f}] over {len(kept)} problems "
                   f"({len(pairs) - len(kept)} where an arm did not reach the target within {MAX_STEPS} steps)")


def slope_verdict(claim: str, rows: list, key, expected: float) -> tuple[Verdict, object]:
    fit = loglog_slope([r["kappa_h"] for r in rows], [r[key] for r in rows])
    if expected == 1.0 and key[1] == 0.0:  # q = 0: P = I, κ(PᵀHP) = κ(H) exactly
        exact = all(abs(r[key] / r["kappa_h"] - 1) < 1e-6 for r in rows)
        return Verdict(claim, "identity" if exact else "fails", "P = I: κ(PᵀHP) = κ(H) by construction (not evidence)",
                       {"slope": fit.slope, "points": fit.n},
                       f"slope {fit.slope:.3f} (P = I: true by construction, kept out of the evidence)"), fit
    return Verdict(claim, fit.judge(expected, TOLERANCE), RULE,
                   {"slope": fit.slope, "ci": list(fit.ci), "intercept": fit.intercept, "points": fit.n,
                    "expected": expected, "tolerance": TOLERANCE},
                   f"slope {fit.slope:.3f} [{fit.ci[0]:.3f}, {fit.ci[1]:.3f}] over {fit.n} problems (predicted "
                   f"{expected:g} ± {TOLERANCE:g})"), fit


def plot(path: Path, rows: list, panels: list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6))
    for ax, (title, kind, series) in zip(axes, panels):
        sub = [r for r in rows if r["kind"] == kind]
        kh = [r["kappa_h"] for r in sub]
        grid = torch.logspace(math.log10(min(kh)), math.log10(max(kh)), 50)
        for i, (label, key, fit) in enumerate(series):
            ax.scatter(kh, [r[key] for r in sub], s=12, color=f"C{i}")
            ax.plot(grid, [math.exp(fit.intercept) * float(k) ** fit.slope for k in grid], color=f"C{i}", lw=1,
                    label=f"{label}: slope {fit.slope:.2f}")
        ax.plot(grid, grid, "k:", lw=1, label="κ(H) (P = I)")
        ax.set(xscale="log", yscale="log", xlabel="κ(H)", ylabel="κ(PᵀHP) at stationarity", title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/results/exponent_law")
    parser.add_argument("--seeds", type=int, default=3, help="independent data draws per spread and kind")
    parser.add_argument("--steps", type=int, default=1000, help="minibatch gradients accumulated at p*")
    args = parser.parse_args()
    rows, steps = [], []
    for kind in KINDS:
        for i, spread in enumerate(SPREADS):
            for s in range(args.seeds):
                row = measure(kind, spread, 100 * i + s + (0 if kind == "scale" else 5000), args.steps)
                rows.append(row)
                model, x, y, solution, _ = problem(kind, spread, row["seed"])
                for arm, (name, hyper) in TRAIN.items():
                    best = min(steps_to_target(model, x, y, solution, name, lr, hyper) for lr in LR_GRID)
                    steps.append({"kind": kind, "spread": spread, "seed": row["seed"], "arm": arm, "steps": best,
                                  "kappa": row[(arm, 0.5)], "kappa_h": row["kappa_h"]})
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in KINDS}
    verdicts, fits = [], {}
    for q in POWERS:
        for arm, kind in (("diagonal", "scale"), ("full_matrix", "correlation")):
            v, fits[(arm, kind, q)] = slope_verdict(
                f"exponent law, {arm} P with q = {q:g} on {kind} ill-conditioning: κ(PᵀHP) ∝ κ(H)^{1 - q:g}",
                by_kind[kind], (arm, q), 1.0 - q)
            verdicts.append(v)
    predicted = {("diagonal", "correlation"): 1.0, ("kronecker", "scale"): 0.5, ("kronecker", "correlation"): 0.5,
                 ("full_matrix", "scale"): 0.5}
    for (arm, kind), expected in predicted.items():
        what = "cannot represent correlation: κ(PᵀHP) ∝ κ(H)" if expected == 1.0 else "κ(PᵀHP) ∝ κ(H)^0.5"
        v, fits[(arm, kind, 0.5)] = slope_verdict(f"structure, {arm} P (q = ½) on {kind} ill-conditioning {what}",
                                                  by_kind[kind], (arm, 0.5), expected)
        verdicts.append(v)
    for kind in KINDS:
        for matrix_arm in ("kronecker", "full_matrix"):
            verdicts.append(steps_verdict([s for s in steps if s["kind"] == kind], matrix_arm, kind))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "exponent_law.png", rows, [
        ("Diagonal P, scale ill-conditioning", "scale",
         [(f"q = {q:g}", ("diagonal", q), fits[("diagonal", "scale", q)]) for q in POWERS]),
        ("Full-matrix P, correlation ill-conditioning", "correlation",
         [(f"q = {q:g}", ("full_matrix", q), fits[("full_matrix", "correlation", q)]) for q in POWERS])])
    plot(out / "structure.png", rows, [
        (f"q = ½ on {kind} ill-conditioning", kind,
         [(arm, (arm, 0.5), fits[(arm, kind, 0.5)]) for arm in ARMS]) for kind in KINDS])
    kappa_table = markdown_table(
        ["kind", "spread (decades)", "data seed", "κ(H)", *(f"diagonal q={q:g}" for q in POWERS), "kronecker ½",
         *(f"full q={q:g}" for q in POWERS)],
        [[r["kind"], r["spread"], r["seed"], fmt(r["kappa_h"]),
          *(fmt(r.get(("diagonal", q))) for q in POWERS), fmt(r[("kronecker", 0.5)]),
          *(fmt(r.get(("full_matrix", q))) for q in POWERS)] for r in rows])
    steps_table = markdown_table(
        ["kind", "spread (decades)", "data seed", "κ(H)", *TRAIN],
        [[r["kind"], r["spread"], r["seed"], fmt(r["kappa_h"]),
          *(f"{fmt(s['steps'])} (κ {fmt(s['kappa'])})" for s in steps
            if (s["kind"], s["spread"], s["seed"]) == (r["kind"], r["spread"], r["seed"]))] for r in rows])
    intro = (f"Least squares, linear model ({FEATURES} features + bias, one output), float64, N = {N}, noise "
             f"σ = {NOISE}. P read after {args.steps} minibatch gradients (batch {BATCH}) accumulated at the minimizer "
             "p* (running sums, ε = 1e-16); κ(PᵀHP) from dense eigenvalues with P taken from the optimizer's own "
             "operator. A diagonal P is measured with every q on the scale problems, a full-matrix P with every q on "
             "the correlation problems, and every structure at q = ½ on both (— : not measured). With one output, the "
             "Kronecker P's right factor is the whole second moment of the weight gradient, so on the weights it is "
             "the full-matrix P (their points coincide in the plots; they differ on the bias, which the Kronecker "
             "P treats diagonally).")
    sections = [intro, "## κ(PᵀHP) at stationarity\n\n" + kappa_table,
                "![exponent law](exponent_law.png)", "![structure](structure.png)",
                f"## Steps to target (distance to p* down to {TARGET_FRACTION:.0%} of its start; best of lr {LR_GRID}; "
                f"EMA second moments β₂ = 0.999; ∞: not within {MAX_STEPS} steps)\n\n" + steps_table]
    print(write_check_report(out, "exponent_law", sections, verdicts))


if __name__ == "__main__":
    main()
