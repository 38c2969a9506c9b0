"""Claims: normalization lowers κ⁺ — measured on a PSD surrogate (the GGN) with every known invariance
projected out analytically, on H where it is defined, per hidden layer, and with BatchNorm's own block P.

Four ReLU MLPs (8 → 8 → 8 → 4) on the same badly scaled, uncentred synthetic classification problem
(8 features over 1 decade, offset 1; 256 samples; cross-entropy with label smoothing 0.1, so a finite
minimizer exists), float64, ``--seeds`` initializations each, full-batch Adam for ``--steps`` steps:

* ``plain`` (Linear → ReLU), ``batchnorm`` (Linear → BN → ReLU), ``layernorm`` (Linear → LN → ReLU) and
  ``layernorm_no_act`` (Linear → ReLU → LN without γ, β: nothing between the LN and the next Linear, the
  case the LayerNorm claim is about).

Measured at initialization and at the end of training (BatchNorm in train mode, full batch):

* κ⁺ of the GGN ``JᵀH_ℓJ`` (PSD everywhere) and of H on the orthogonal complement of the analytic
  invariances (softmax shift, biases before BN, shifts before LN, LN's output null vector, BN/LN scale
  invariances, ReLU rescalings), with the eigenvalues still ≤ 1e-7·λmax counted, beside the dead and
  rarely active ReLU units. κ⁺ of an indefinite H is undefined: such claims are ``invalid``.
* BatchNorm's scale invariance: ‖Hwᵢ‖/(‖wᵢ‖λmax) for every hidden weight row (``Hwᵢ = −∇_wᵢL``, so 0
  only at a critical point; exactly 0 in the GGN), against the plain network's rows.
* κ(ĤᵀĤ) (κ⁺ when singular) of the input of every Linear after the first; the residual of LN's ``[1; 0]``.
* The matched BatchNorm test: at the plain network's own weights, κ⁺(PᵀGP) and κ⁺(PᵀHP) with ``P`` the
  frozen-statistics BN reparametrization (block, non-diagonal), against κ⁺(G), κ⁺(H).
* The per-neuron bound κ(Gᵢ) ≤ κ(Dᵢ)·κ(ĤᵀĤ) for every neuron of the networks without BatchNorm (a theorem).
* A spectral density of H at the end of training by stochastic Lanczos quadrature (first seed).

Verdicts: the paired rule of the tuned experiments over the seeds (Wilcoxon signed-rank, Holm within
this experiment, margin 1.25 on ratios).

    python scripts/check_kappa_plus.py --out outputs/results/kappa_plus
"""
from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from precond.data import synthetic
from precond.ggn import dense_ggn
from precond.hessian import HessianOperator, dense_hessian, measurement_mode
from precond.invariance import (
    null_residuals,
    projected_eigenvalues,
    projected_kappa_plus,
    relu_rescalings,
    scale_invariances,
    stack,
    translation_invariances,
    weight_rows,
)
from precond.models import mlp
from precond.neuron_blocks import neuron_bounds
from precond.normalization import hidden_matrix_kappas, relu_activity
from precond.reparametrization import bn_reparametrization_matrix
from precond.slq import density_on_grid, slq
from precond.spectrum import NULL_RTOL, kappa_plus_of
from precond.stationarity import loss_and_grad, minimize_network
from precond.sweep.check_report import fmt, markdown_table, write_judged_check_report
from precond.sweep.verdicts import Claim

#: a κ⁺ within 2× of 1/NULL_RTOL is set by the eigenvalue cut, not measured (the "at the cut" column)
FLOOR = 0.5 / NULL_RTOL
#: the cuts (relative to λmax) below which eigenvalues count as null, over which the GGN's κ⁺ is also reported
CUTS = (1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
#: arm → (normalization, norm after activation, norm affine)
ARMS = {"plain": ("none", False, True), "batchnorm": ("batchnorm", False, True),
        "layernorm": ("layernorm", False, True), "layernorm_no_act": ("layernorm", True, False)}
WIDTHS, LABEL_SMOOTHING, LR = (8, 8), 0.1, 0.01
HIDDEN_INPUTS = ("4", "7")  # the Linear layers after the first (inputs: hidden layers 1 and 2)
ROW_NULL = 1e-3  # a weight row counts as a null direction of H when ‖Hw‖/(‖w‖λmax) ≤ this
ATTEMPT_LBFGS, ATTEMPT_NEWTON = 400, 15  # the budget of the stationarity attempt (first seed of each arm)


def loss_fn(outputs, targets):
    return F.cross_entropy(outputs, targets, label_smoothing=LABEL_SMOOTHING)


def data():
    d = synthetic(task="classification", n_train=256, n_val=8, n_test=0, features=8, classes=4, scale_decades=1.0,
                  mean_offset=1.0, noise=0.5, data_seed=0)
    return d.x_train.double(), d.y_train


def invariances(model: nn.Module) -> torch.Tensor:
    n = sum(p.numel() for p in model.parameters())
    return stack(translation_invariances(model, softmax_output=True) + scale_invariances(model)
                 + relu_rescalings(model), n)


def hidden_weight_rows(model: nn.Module) -> torch.Tensor:
    """Every hidden neuron's weight row as a direction (the scale-invariant ones under BatchNorm)."""
    return torch.cat([weight_rows(model, m) for m in [m for m in model if isinstance(m, nn.Linear)][:-1]], dim=1)


def ones_null_residual(model: nn.Module, x: torch.Tensor) -> float:
    """max over Linear layers after a LayerNorm of ‖ĤᵀĤ [1; 0]‖ / (λmax ‖[1; 0]‖)."""
    layers, worst = list(model), 0.0
    h = x
    with torch.no_grad():
        for i, m in enumerate(layers):
            if isinstance(m, nn.Linear) and i > 0 and isinstance(layers[i - 1], nn.LayerNorm):
                ext = torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype)], dim=1)
                gram = ext.T @ ext / h.shape[0]
                e = torch.cat([torch.ones(h.shape[1], dtype=h.dtype), torch.zeros(1, dtype=h.dtype)])
                worst = max(worst, float(null_residuals(gram, e[:, None])))
            h = m(h)
    return worst


def curvature(model, x, y, prefix: str) -> dict:
    """GGN and H κ⁺ with invariances projected; for the plain network also with BN's block P."""
    nulls = invariances(model)
    with measurement_mode(model, "train"):
        g = dense_ggn(model, loss_fn, [(x, y)])
        h = dense_hessian(model, loss_fn, [(x, y)])
    out = {}
    eig = projected_eigenvalues(g, nulls)
    for cut in CUTS:  # κ⁺ against the cut: flat where it measures a gap, growing with 1/cut where the cut sets it
        out[f"{prefix}_ggn_kappa_plus@{cut:g}"] = kappa_plus_of(eig, rtol=cut)[0]
    for name, matrix in (("ggn", g), ("h", h)):
        k = projected_kappa_plus(matrix, nulls)
        out.update({f"{prefix}_{name}_kappa_plus": k["kappa_plus"],
                    f"{prefix}_{name}_residual_null": k["residual_null"],
                    f"{prefix}_{name}_lam_min_ratio": k["lam_min_ratio"]})
    rows = hidden_weight_rows(model)
    out[f"{prefix}_row_residual"] = float(null_residuals(h, rows).median())
    out[f"{prefix}_rows_null"] = int((null_residuals(h, rows) <= ROW_NULL).sum())
    out[f"{prefix}_ggn_row_residual_max"] = float(null_residuals(g, rows).max())
    if not any(isinstance(m, nn.BatchNorm1d) for m in model):
        p = bn_reparametrization_matrix(model, x)
        z_nulls = torch.linalg.solve(p, nulls)
        for name, matrix in (("ggn", g), ("h", h)):
            out[f"{prefix}_{name}_kappa_plus_bnP"] = projected_kappa_plus(p.T @ matrix @ p, z_nulls)["kappa_plus"]
        bounds = neuron_bounds(model, loss_fn, x, y, g)
        out[f"{prefix}_bound_violations"] = sum(not b["holds"] for b in bounds)
        out[f"{prefix}_bound_finite"] = sum(b["finite"] for b in bounds)
    activity = relu_activity(model, x)
    out[f"{prefix}_dead"] = sum(a["dead"] for a in activity.values())
    out[f"{prefix}_rare"] = sum(a["rare"] for a in activity.values())
    for layer, k in hidden_matrix_kappas(model, x, rel_tol=1e-12).items():
        if layer in HIDDEN_INPUTS:
            out[f"{prefix}_hidden_{layer}"] = k["kappa_hidden"] if k["kappa_hidden"] is not None else math.inf
            out[f"{prefix}_hidden_plus_{layer}"] = k["kappa_hidden_plus"]
    out[f"{prefix}_ones_residual"] = ones_null_residual(model, x)
    return out


def stationarity_attempt(model: nn.Module, x, y) -> dict:
    """From the end of training, L-BFGS then damped saddle-free Newton on a copy (a small budget): how close to
    a critical point the network gets, and whether H is positive semi-definite (invariances projected) there."""
    twin = copy.deepcopy(model)
    point = minimize_network(twin, loss_fn, x, y, tol=1e-8, lbfgs_iter=ATTEMPT_LBFGS, newton_iter=ATTEMPT_NEWTON)
    with measurement_mode(twin, "train"):
        k = projected_kappa_plus(dense_hessian(twin, loss_fn, [(x, y)]), invariances(twin))
    return {"attempt_grad_ratio": point.grad_ratio, "attempt_lam_min_ratio": k["lam_min_ratio"],
            "attempt_h_kappa_plus": k["kappa_plus"]}


def run(arm: str, seed: int, x, y, steps: int) -> tuple[dict, nn.Module]:
    norm, after, affine = ARMS[arm]
    torch.manual_seed(seed)
    model = mlp((x.shape[1],), 4, norm, widths=WIDTHS, norm_after_activation=after, norm_affine=affine).double()
    summary = {"status": "completed", **curvature(model, x, y, "init")}
    _, g0 = loss_and_grad(model, loss_fn, x, y)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    loss, g = loss_and_grad(model, loss_fn, x, y)
    summary.update({"loss": loss, "grad_ratio": float(g.norm() / g0.norm()), **curvature(model, x, y, "end")})
    return summary, model


def claims() -> list[Claim]:
    """The κ⁺ comparisons of the GGN are primary (with the cut as their floor: a side at 1/NULL_RTOL measures the
    cut); the per-layer and per-row views of the mechanism are exploratory. There are no claims on κ⁺ of H: the
    theory speaks of H at a critical point, which no network here reaches (the attempt table shows how far from
    one the end of training is), and away from one H is indefinite and its κ⁺ undefined — the table still
    reports H where it is measured."""
    out = []
    for when, label in (("init", "at initialization"), ("end", "at the end of training")):
        for arm in ("batchnorm", "layernorm", "layernorm_no_act"):
            out.append(Claim(f"{arm} lowers κ⁺ of the GGN {label} (invariances projected)", arm, "plain",
                             metric=f"{when}_ggn_kappa_plus", scale="ratio", floor=FLOOR))
    for when, label in (("init", "at initialization"), ("end", "at the end of training")):
        out.append(Claim(f"at the plain network's weights {label}, BN's frozen-statistics block P lowers κ⁺ of the GGN",
                         {"arm": "plain", "metric": f"{when}_ggn_kappa_plus_bnP"},
                         {"arm": "plain", "metric": f"{when}_ggn_kappa_plus"}, scale="ratio", floor=FLOOR))
    out.append(Claim("BatchNorm makes each hidden weight row a near-null direction of H at the end of training "
                     "(median ‖Hwᵢ‖/(‖wᵢ‖λmax) below the plain network's)", "batchnorm", "plain",
                     metric="end_row_residual", scale="ratio", role="exploratory"))
    for layer, which in zip(HIDDEN_INPUTS, ("hidden layer 1", "hidden layer 2")):
        for arm in ("batchnorm", "layernorm", "layernorm_no_act"):
            out.append(Claim(f"{arm} lowers κ⁺(ĤᵀĤ) of {which}'s output at the end of training", arm, "plain",
                             metric=f"end_hidden_plus_{layer}", scale="ratio", role="exploratory"))
    out.append(Claim("layernorm_no_act: [1; 0] is a null vector of the next layer's ĤᵀĤ (residual ≤ 1e-12)",
                     {"arm": "layernorm_no_act", "metric": "end_ones_residual"}, 1e-12, identity=True,
                     scale="difference"))
    out.append(Claim("BatchNorm's weight rows are null directions of the GGN (Jw = 0 up to BN's ε = 1e-5, i.e. "
                     "O(ε/σ²); residual ≤ 1e-4)", {"arm": "batchnorm", "metric": "end_ggn_row_residual_max"}, 1e-4,
                     identity=True, scale="difference"))
    out.append(Claim("per-neuron bound κ(Gᵢ) ≤ κ(Dᵢ)·κ(ĤᵀĤ) holds for every neuron of the plain network",
                     {"arm": "plain", "metric": "end_bound_violations"}, 0.5, identity=True, scale="difference"))
    return out


def plot(path: Path, runs: dict, seeds: list, densities: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    arms = list(ARMS)
    panels = [("init_ggn_kappa_plus", "end_ggn_kappa_plus", "κ⁺ of the GGN (invariances projected)", axes[0, 0]),
              ("end_hidden_plus_4", "end_hidden_plus_7", "κ⁺(ĤᵀĤ) at the end: hidden layer 1 / 2", axes[1, 0])]
    for first, second, title, ax in panels:
        for j, metric in enumerate((first, second)):
            for i, arm in enumerate(arms):
                vals = [runs[arm][s].get(metric) for s in seeds]
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                ax.scatter([i + (j - 0.5) * 0.3] * len(vals), vals, s=12, color=f"C{j}",
                           label=metric if i == 0 else None)
        ax.set(yscale="log", title=title, xticks=range(len(arms)), xticklabels=arms)
        ax.legend(fontsize=7)
    ax = axes[0, 1]
    for i, arm in enumerate(arms):
        vals = [runs[arm][s]["end_row_residual"] for s in seeds]
        ax.scatter([i] * len(vals), vals, s=12, color="C2")
    ax.axhline(ROW_NULL, color="k", ls=":", lw=1, label=f"null threshold {ROW_NULL:g}")
    ax.set(yscale="log", title="median ‖Hwᵢ‖/(‖wᵢ‖λmax) of the hidden weight rows (end)", xticks=range(len(arms)),
           xticklabels=arms)
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    for i, (arm, (grid, density)) in enumerate(densities.items()):
        ax.plot(grid, density.clamp_min(1e-8), color=f"C{i}", lw=1, label=arm)
    ax.set(yscale="log", xlabel="λ / λmax", ylabel="density",
           title="spectral density of H at the end (SLQ, first seed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def density(model, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """SLQ density of H (train-mode BN, full batch) on λ/λmax."""
    with measurement_mode(model, "train"):
        op = HessianOperator(model, loss_fn, [(x, y)])
        quad = slq(op.matvec, op.n, steps=60, vectors=8)
    top = float(quad.nodes.abs().max())
    quad.nodes = quad.nodes / top
    grid = torch.linspace(-0.2, 1.05, 1000, dtype=torch.float64)
    return grid, density_on_grid(quad, grid, width=0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/results/kappa_plus")
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    x, y = data()
    seeds = list(range(args.seeds))
    runs, densities, attempts = {arm: {} for arm in ARMS}, {}, {}
    for arm in ARMS:
        for s in seeds:
            runs[arm][s], model = run(arm, s, x, y, args.steps)
            if s == 0:
                densities[arm] = density(model, x, y)
                attempts[arm] = stationarity_attempt(model, x, y)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "kappa_plus.png", runs, seeds, densities)

    def med(arm, metric):
        vals = sorted(v for v in (runs[arm][s].get(metric) for s in seeds) if v is not None)
        return vals[len(vals) // 2] if vals else None

    columns = [("end loss", "loss", 4), ("‖∇L‖/‖∇L₀‖", "grad_ratio", 2), ("GGN κ⁺ init", "init_ggn_kappa_plus", 3),
               ("GGN κ⁺ end", "end_ggn_kappa_plus", 3), ("GGN near-null left (end)", "end_ggn_residual_null", 3),
               ("GGN κ⁺ at the cut (end, seeds)", "at_cut", 0),
               ("H κ⁺ end", "end_h_kappa_plus", 3), ("H λmin/λmax end", "end_h_lam_min_ratio", 2),
               ("dead / rare ReLU (end)", None, 0), ("hidden rows null in H (end)", "end_rows_null", 3),
               ("κ⁺(ĤᵀĤ) layer 1 / 2 (end)", None, 0)]
    rows = []
    for arm in ARMS:
        row = [arm]
        for _, metric, digits in columns:
            if metric == "at_cut":
                at_cut = sum(1 for s in seeds if (runs[arm][s]["end_ggn_kappa_plus"] or 0) >= FLOOR)
                row.append(f"{at_cut} of {len(seeds)}")
            elif metric is None and "ReLU" in _:
                row.append(f"{fmt(med(arm, 'end_dead'))} / {fmt(med(arm, 'end_rare'))}")
            elif metric is None:
                row.append(f"{fmt(med(arm, 'end_hidden_plus_4'))} / {fmt(med(arm, 'end_hidden_plus_7'))}")
            else:
                row.append(fmt(med(arm, metric), digits))
        rows.append(row)
    plain_p = [["GGN at init", fmt(med("plain", "init_ggn_kappa_plus")), fmt(med("plain", "init_ggn_kappa_plus_bnP"))],
               ["GGN at end", fmt(med("plain", "end_ggn_kappa_plus")), fmt(med("plain", "end_ggn_kappa_plus_bnP"))],
               ["H at end", fmt(med("plain", "end_h_kappa_plus")), fmt(med("plain", "end_h_kappa_plus_bnP"))]]
    intro = (f"Medians over {len(seeds)} initializations; full-batch Adam (lr {LR}) for {args.steps} steps, float64. "
             "κ⁺ is over the complement of the analytic invariances, with eigenvalues ≤ 1e-7·λmax left out and "
             "counted ('near-null left'); an indefinite H has no κ⁺ (—). No network is at a critical point at the "
             "end (‖∇L‖/‖∇L₀‖, λmin/λmax), so H is shown where it is measured but judged nowhere: the theory's claims "
             "on κ⁺ of H are about a critical point, and none is reached. A κ⁺ within 2× of "
             f"1/{NULL_RTOL:g} ('at the cut') means the projected spectrum reaches down to the null threshold: it "
             "is a floor set by the cut, not a measured gap, and a comparison with a side there on more than one "
             "seed is invalid ('floor').")
    attempt_rows = [[arm, fmt(a["attempt_grad_ratio"], 2), fmt(a["attempt_lam_min_ratio"], 2),
                     fmt(a["attempt_h_kappa_plus"])] for arm, a in attempts.items()]
    sections = [intro, markdown_table(["network", *(c[0] for c in columns)], rows),
                "The matched BatchNorm test on the plain network (κ⁺, medians):\n\n"
                + markdown_table(["matrix", "in p", "in z (BN's block P)"], plain_p),
                f"An attempt to reach a critical point from the end of training (first seed; L-BFGS for "
                f"{ATTEMPT_LBFGS} iterations, then damped saddle-free Newton for {ATTEMPT_NEWTON}), as for softmax "
                "regression in local_rate:\n\n"
                + markdown_table(["network", "‖∇L‖/‖∇L₀‖ reached", "λmin/λmax of H there", "κ⁺ of H there"],
                                 attempt_rows),
                "κ⁺ of the GGN at the end of training against the cut below which eigenvalues count as null (medians; "
                f"the claims use {NULL_RTOL:g}): a measured gap stays flat as the cut shrinks, a κ⁺ the cut sets grows "
                "like 1/cut.\n\n"
                + markdown_table(["network", *(f"cut {c:g}" for c in CUTS)],
                                 [[arm, *(fmt(med(arm, f"end_ggn_kappa_plus@{c:g}")) for c in CUTS)] for arm in ARMS]),
                "![kappa_plus](kappa_plus.png)"]
    print(write_judged_check_report(out, "kappa_plus", sections, claims(), runs, seeds))


if __name__ == "__main__":
    main()
