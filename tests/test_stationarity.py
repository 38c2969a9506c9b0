"""Near-stationary points and the stationary P, against their definitions and torch.optim.Adam."""
import copy

import torch
from torch import nn
from torch.nn import functional as F

from precond.data import synthetic
from precond.hessian import dense_hessian
from precond.invariance import projected_eigenvalues, stack, translation_invariances
from precond.local_rate import gd_rate
from precond.models import mlp
from precond.stationarity import (
    flat_params,
    lbfgs_minimize,
    loss_and_grad,
    minimize_network,
    newton_minimize,
    set_flat_params,
    stationary_preconditioner,
)


def _softmax_problem():
    d = synthetic(task="classification", n_train=256, n_val=8, n_test=0, features=5, classes=3, scale_decades=1.0,
                  noise=1.0, data_seed=0)
    torch.manual_seed(0)
    return nn.Linear(5, 3).double(), d.x_train.double(), d.y_train


def test_newton_reaches_a_stationary_point_of_softmax_regression_and_the_local_rate_matches_there():
    model, x, y = _softmax_problem()
    nulls = stack(translation_invariances(nn.Sequential(model), softmax_output=True), 18)
    point = newton_minimize(model, F.cross_entropy, x, y, nulls, tol=1e-10)
    _, grad = loss_and_grad(model, F.cross_entropy, x, y)
    assert point.reached and float(grad.norm()) == point.grad_norm and point.grad_ratio <= 1e-10
    h = dense_hessian(model, F.cross_entropy, [(x, y)])
    eig = projected_eigenvalues(h, nulls)
    assert float(eig[0]) > 0 and float(torch.linalg.eigvalsh(h)[0]) < 1e-12  # singular in p, PD on the complement
    p_star = flat_params(model)
    set_flat_params(model, p_star + 0.05 * torch.randn(18, generator=torch.Generator().manual_seed(0),
                                                       dtype=torch.float64))
    r = gd_rate(model, F.cross_entropy, x, y, None, "gd", decades=6.0, hessian=h, nulls=nulls)
    assert r.kappa_z == float(eig[-1] / eig[0])
    assert r.exponent_error < 0.02  # nonlinear loss: the local rate, not an identity


def test_lbfgs_then_saddle_free_newton_drive_a_small_network_to_a_near_stationary_point():
    """L-BFGS alone stalls near a saddle on this network (λmin < 0, ‖∇L‖ stuck at ~1e-6 of its start)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (128,), generator=g)
    torch.manual_seed(0)
    model = mlp((4,), 3, "none", widths=(4,), activation="tanh").double()
    loss0, _grad0 = loss_and_grad(model, lambda out, t: F.cross_entropy(out, t, label_smoothing=0.2), x, y)
    loss_fn = lambda out, t: F.cross_entropy(out, t, label_smoothing=0.2)  # noqa: E731
    twin = copy.deepcopy(model)
    stalled = lbfgs_minimize(twin, loss_fn, x, y, tol=1e-8, max_iter=1000)
    assert not stalled.reached
    point = minimize_network(model, loss_fn, x, y, tol=1e-8, lbfgs_iter=1000)
    _, grad = loss_and_grad(model, loss_fn, x, y)
    assert point.reached and point.loss < loss0 and float(grad.norm()) <= 1e-8 * float(_grad0.norm())


def test_stationary_preconditioner_is_adams_second_moment_after_the_same_minibatches():
    model, x, y = _softmax_problem()
    P = stationary_preconditioner(model, F.cross_entropy, x, y, "adam", 1e-3, 50, 16, seed=3)
    twin = nn.Linear(5, 3).double()
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(twin.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        idx = torch.randint(0, x.shape[0], (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(twin(x[idx]), y[idx]).backward()
        opt.step()
    d = [(opt.state[p]["exp_avg_sq"] / (1 - 0.999**50)).sqrt() + 1e-8 for p in twin.parameters()]
    torch.testing.assert_close(P, torch.cat([t.reshape(-1) for t in d]).rsqrt(), rtol=1e-10, atol=0)
