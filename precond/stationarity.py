"""Reaching a near-stationary point, and reading an adaptive optimizer's ``P`` there (docs/theory.md §5).

The theory's κ statements are local: near a minimizer ``p*`` gradient descent in ``z`` converges at
``(κ−1)/(κ+1)``, ``κ = κ(PᵀH(p*)P)``. Testing them needs ``p*`` itself (full batch, float64, until
``‖∇L(p)‖ ≤ tol·‖∇L(p₀)‖``) and the ``P`` an optimizer settles to there. At stationarity a minibatch
gradient is pure sampling noise, so the second-moment estimates of AdaGrad/RMSprop/Adam converge to
the per-coordinate noise variance: that is the ``P`` the claims are about, not the transient ``P`` of
early full-batch steps (where ``v`` tracks a shrinking, direction-dependent gradient).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from precond.curvature import flat_P
from precond.hessian import dense_hessian
from precond.invariance import complement_basis


@dataclass
class StationaryPoint:
    """How close the model got: ``‖∇L(p)‖/‖∇L(p₀)‖`` against the requested ``tol``."""

    grad_ratio: float
    grad_norm: float
    loss: float
    iterations: int
    tol: float

    @property
    def reached(self) -> bool:
        return self.grad_ratio <= self.tol


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def set_flat_params(model: nn.Module, flat: Tensor) -> None:
    start = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(flat[start:start + p.numel()].view_as(p))
                start += p.numel()


def loss_and_grad(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor) -> tuple[float, Tensor]:
    """The full-batch loss and its flat gradient (train mode: BatchNorm uses the batch's statistics)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads])


def newton_minimize(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, nulls: Tensor, tol: float = 1e-10,
                    max_iter: int = 100) -> StationaryPoint:
    """Damped Newton on the orthogonal complement of the exact null directions ``nulls`` (n × m), with a
    backtracking line search: for convex models (linear, logistic and softmax regression) in float64."""
    q = complement_basis(nulls)
    _, g0 = loss_and_grad(model, loss_fn, x, y)
    g0_norm = float(g0.norm())
    loss, g = loss_and_grad(model, loss_fn, x, y)
    iterations = 0
    while iterations < max_iter and float(g.norm()) > tol * g0_norm:
        iterations += 1
        h = q.T @ dense_hessian(model, loss_fn, [(x, y)]) @ q
        step = q @ torch.linalg.solve(h, q.T @ g)
        p0, t = flat_params(model), 1.0
        while True:
            set_flat_params(model, p0 - t * step)
            new_loss, new_g = loss_and_grad(model, loss_fn, x, y)
            if new_loss <= loss - 1e-4 * t * float(g @ step) or t < 1e-10:
                break
            t /= 2
        loss, g = new_loss, new_g
    return StationaryPoint(float(g.norm()) / g0_norm, float(g.norm()), loss, iterations, tol)


def lbfgs_minimize(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, tol: float = 1e-8,
                   max_iter: int = 20_000, chunk: int = 200) -> StationaryPoint:
    """Full-batch L-BFGS (strong-Wolfe line search, history 100) until ``‖∇L‖ ≤ tol·‖∇L(p₀)‖`` or ``max_iter``
    iterations: for small non-convex networks in float64."""
    params = [p for p in model.parameters() if p.requires_grad]
    _, g0 = loss_and_grad(model, loss_fn, x, y)
    g0_norm = float(g0.norm())
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=chunk, history_size=100, line_search_fn="strong_wolfe",
                            tolerance_grad=0.0, tolerance_change=0.0)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    done = 0
    loss, g = loss_and_grad(model, loss_fn, x, y)
    while done < max_iter and float(g.norm()) > tol * g0_norm:
        with torch.enable_grad():
            opt.step(closure)
        done += chunk
        new_loss, g = loss_and_grad(model, loss_fn, x, y)
        if new_loss == loss and float(g.norm()) > tol * g0_norm:
            break  # no progress in a whole chunk: stuck (round-off)
        loss = new_loss
    return StationaryPoint(float(g.norm()) / g0_norm, float(g.norm()), loss, done, tol)


def saddle_free_newton(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, g0_norm: float, tol: float,
                       max_iter: int = 60) -> StationaryPoint:
    """Damped saddle-free Newton: ``p ← p − V (Vᵀg / (|λ| + μ))`` with ``H = V diag(λ) Vᵀ`` (Levenberg–Marquardt
    damping ``μ``: divided by 10 after a step that lowers the loss, multiplied by 10 and retried otherwise).
    Negative curvature becomes a descent direction, so it leaves the saddles where L-BFGS stalls, and it
    converges quadratically near a minimizer. Dense ``H`` once per accepted step: small models only."""
    loss, g = loss_and_grad(model, loss_fn, x, y)
    mu, it = None, 0
    for it in range(1, max_iter + 1):
        if float(g.norm()) <= tol * g0_norm:
            break
        lam, vectors = torch.linalg.eigh(dense_hessian(model, loss_fn, [(x, y)]))
        top = float(lam.abs().max())
        mu = 1e-3 * top if mu is None else mu
        p0, coords = flat_params(model), vectors.T @ g
        while True:
            set_flat_params(model, p0 - vectors @ (coords / (lam.abs() + mu)))
            new_loss, new_g = loss_and_grad(model, loss_fn, x, y)
            if new_loss < loss or (new_loss == loss and float(new_g.norm()) < float(g.norm())):
                mu = max(mu / 10, 1e-15 * top)
                break
            mu *= 10
            if mu > 1e6 * top:  # no step lowers the loss: stationary to round-off
                set_flat_params(model, p0)
                return StationaryPoint(float(g.norm()) / g0_norm, float(g.norm()), loss, it, tol)
        loss, g = new_loss, new_g
    return StationaryPoint(float(g.norm()) / g0_norm, float(g.norm()), loss, it, tol)


def minimize_network(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, tol: float = 1e-8,
                     lbfgs_iter: int = 3000, newton_iter: int = 60) -> StationaryPoint:
    """L-BFGS, then saddle-free Newton, until ``‖∇L‖ ≤ tol·‖∇L(p₀)‖`` (p₀: the model's point on entry)."""
    _, g0 = loss_and_grad(model, loss_fn, x, y)
    first = lbfgs_minimize(model, loss_fn, x, y, tol=tol, max_iter=lbfgs_iter)
    if first.reached:
        return first
    second = saddle_free_newton(model, loss_fn, x, y, float(g0.norm()), tol, max_iter=newton_iter)
    second.iterations += first.iterations
    return second


def stationary_preconditioner(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, name: str, lr: float,
                              steps: int, batch_size: int, seed: int = 0) -> Tensor:
    """``P = D^{-1/2}`` (flat) of the preconditioner ``name`` after ``steps`` minibatch steps from a copy of
    ``model`` (meant to start at ``p*``, with ``lr`` small enough to stay near it): the stationary ``P``."""
    from precond.optim import build_optimizer  # precond.optim imports the chain; keep this module light

    twin = copy.deepcopy(model)
    opt = build_optimizer(twin.parameters(), name, lr=lr)
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
            opt.zero_grad()
            loss_fn(twin(x[idx]), y[idx]).backward()
            opt.step()
    return flat_P(opt, [p for p in twin.parameters() if p.requires_grad])
