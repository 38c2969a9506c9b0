"""Non-diagonal preconditioners and the diagonal family's power q, each against a float64 reference written
here from the formulas (matrix powers by scipy's Schur–Padé fractional_matrix_power, an algorithm independent
of the eigendecompositions the code uses), and P exposed as an operator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import fractional_matrix_power
from torch import nn
from torch.nn import functional as F

from precond.curvature import measure_curvature
from precond.errors import ConfigError
from precond.hessian import dense_hessian
from precond.matrix_preconditioners import FULL_MATRIX_MAX_PARAMS, MATRIX_PRECONDITIONERS
from precond.optim import build_optimizer
from precond.sweep.pack_rules import NON_DIAGONAL, alone_reason

STEPS = 6


def mpow(c: np.ndarray, q: float, eps: float) -> np.ndarray:
    """``(C + εI)^{-q}``, the reference matrix power."""
    return np.real(fractional_matrix_power(c + eps * np.eye(c.shape[0]), -q))


def problem(seed: int = 0, conv: bool = False):
    torch.manual_seed(seed)
    if conv:
        model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2)).double()
        x = torch.randn(32, 2, 3, 3, dtype=torch.float64)
    else:
        model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
        x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randn(32, 2, dtype=torch.float64)
    return model, x, y


def batches(x, y, steps=STEPS, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, x.shape[0], (size,), generator=g) for _ in range(steps)]


def grads_of(model, x, y):
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def train(model, x, y, name, lr, **hyper):
    opt = build_optimizer(model.parameters(), name, lr=lr, **hyper)
    for idx in batches(x, y):
        opt.zero_grad()
        F.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return opt


def flat(params) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()


def reference_full_matrix(model, x, y, lr, q, eps, beta2, every, momentum):
    """full_matrix by its formulas: C (sum or bias-corrected average), M = (Ĉ + εI)^(-q) refreshed every
    ``every`` steps, d = M g, heavy-ball buffer b = d, then μb + d; p ← p − η b."""
    p = flat(model.parameters())
    c, m_cached, buf = np.zeros((p.size, p.size)), None, None
    for k, idx in enumerate(batches(x, y), start=1):
        set_params(model, p)
        g = flat(grads_of(model, x[idx], y[idx]))
        c = c + np.outer(g, g) if beta2 is None else beta2 * c + (1 - beta2) * np.outer(g, g)
        if (k - 1) % every == 0:
            m_cached = mpow(c if beta2 is None else c / (1 - beta2**k), q, eps)
        d = m_cached @ g
        buf = d if buf is None else momentum * buf + d
        p = p - lr * (buf if momentum else d)
    return p, m_cached


def set_params(model, p: np.ndarray):
    start = 0
    with torch.no_grad():
        for t in model.parameters():
            t.copy_(torch.from_numpy(p[start:start + t.numel()]).view_as(t))
            start += t.numel()


@pytest.mark.parametrize("q,beta2,every,momentum", [(0.5, None, 1, 0.0), (0.25, 0.9, 2, 0.9), (1.0, 0.99, 1, 0.0)])
def test_full_matrix_matches_its_formula(q, beta2, every, momentum):
    model, x, y = problem()
    twin = problem()[0]
    expected, m_last = reference_full_matrix(twin, x, y, 0.05, q, 1e-3, beta2, every, momentum)
    opt = train(model, x, y, "full_matrix", 0.05, power=q, eps=1e-3, beta2=beta2, update_every=every,
                momentum=momentum)
    got = flat(model.parameters())
    assert np.abs(got - expected).max() <= 1e-10 * max(1.0, np.abs(expected).max())
    # P exposed as an operator: P Pᵀ is the M the step used
    params = list(model.parameters())
    p_matrix = opt.preconditioner_operator(params).dense().numpy()
    assert np.abs(p_matrix @ p_matrix.T - m_last).max() <= 1e-9 * np.abs(m_last).max()


def reference_kronecker(model, x, y, lr, q, eps, beta2):
    """kronecker by its formulas, per weight G (m × k): L, R (sums or averages, bias-corrected),
    M = (L̂/(tr L̂/m) + εI)^(-q) ⊗ (R̂/m + εI)^(-q) applied to vec(G) as a dense Kronecker product; biases
    (v̂ + ε)^(-q). Returns the parameters and each weight's M."""
    params = [p.detach().numpy().copy() for p in model.parameters()]
    state = [None] * len(params)
    ms = {}
    for k, idx in enumerate(batches(x, y), start=1):
        with torch.no_grad():
            for t, v in zip(model.parameters(), params):
                t.copy_(torch.from_numpy(v))
        gs = [g.numpy() for g in grads_of(model, x[idx], y[idx])]
        for i, g in enumerate(gs):
            def acc(old, new):
                return new if old is None and beta2 is None else (
                    (0 if old is None else old) + new if beta2 is None else beta2 * (0 if old is None else old)
                    + (1 - beta2) * new)

            corr = 1.0 if beta2 is None else 1 - beta2**k
            if g.ndim < 2:
                state[i] = acc(state[i], g * g)
                params[i] = params[i] - lr * g * (state[i] / corr + eps) ** (-q)
                continue
            mat = g.reshape(g.shape[0], -1)
            left, right = acc(None if state[i] is None else state[i][0], mat @ mat.T), \
                acc(None if state[i] is None else state[i][1], mat.T @ mat)
            state[i] = (left, right)
            m = mat.shape[0]
            lhat, rhat = left / corr, right / corr
            big_m = np.kron(mpow(lhat / (np.trace(lhat) / m), q, eps), mpow(rhat / m, q, eps))
            ms[i] = big_m
            params[i] = params[i] - lr * (big_m @ mat.reshape(-1)).reshape(g.shape)
    return np.concatenate([p.reshape(-1) for p in params]), ms


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("q,beta2", [(0.5, None), (0.25, 0.9), (0.75, 0.999)])
def test_kronecker_matches_its_formula(conv, q, beta2):
    model, x, y = problem(conv=conv)
    twin = problem(conv=conv)[0]
    expected, ms = reference_kronecker(twin, x, y, 0.05, q, 1e-3, beta2)
    opt = train(model, x, y, "kronecker", 0.05, power=q, eps=1e-3, beta2=beta2)
    got = flat(model.parameters())
    assert np.abs(got - expected).max() <= 1e-10 * max(1.0, np.abs(expected).max())
    # each weight's P block squares to the reference M
    params = list(model.parameters())
    op = opt.preconditioner_operator(params)
    p_dense = op.dense().numpy()
    starts = np.cumsum([0] + [p.numel() for p in params])
    for i, big_m in ms.items():
        block = p_dense[starts[i]:starts[i + 1], starts[i]:starts[i + 1]]
        assert np.abs(block @ block.T - big_m).max() <= 1e-9 * np.abs(big_m).max()


@pytest.mark.parametrize("name,hyper", [("adam", {"power": 0.3}), ("rmsprop", {"power": 0.25, "centered": True}),
                                        ("adagrad", {"power": 1.0}), ("adam", {"power": 0.0})])
def test_diagonal_power_matches_its_formula(name, hyper):
    """D = v̂^q + ε in place of torch's √v̂ + ε: checked against the moments computed here."""
    model, x, y = problem()
    twin = problem()[0]
    lr, eps, q = 0.01, 1e-8, hyper["power"]
    p = flat(twin.parameters())
    m = v = gavg = np.zeros_like(p)
    for k, idx in enumerate(batches(x, y), start=1):
        set_params(twin, p)
        g = flat(grads_of(twin, x[idx], y[idx]))
        if name == "adam":
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            d = (m / (1 - 0.9**k)) / ((v / (1 - 0.999**k)) ** q + eps)
        elif name == "rmsprop":
            v, gavg = 0.99 * v + 0.01 * g * g, 0.99 * gavg + 0.01 * g
            d = g / ((v - gavg * gavg) ** q + eps)
        else:
            v = v + g * g
            d = g / (v**q + 1e-10)
        p = p - lr * d
    train(model, x, y, name, lr, **hyper)
    assert np.abs(flat(model.parameters()) - p).max() <= 1e-10 * max(1.0, np.abs(p).max())


def test_power_one_half_is_torch_adam():
    model, x, y = problem()
    twin = problem()[0]
    train(model, x, y, "adam", 0.01, power=0.5)
    ref = torch.optim.Adam(twin.parameters(), lr=0.01, foreach=False)
    for idx in batches(x, y):
        ref.zero_grad()
        F.mse_loss(twin(x[idx]), y[idx]).backward()
        ref.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", ["full_matrix", "kronecker"])
def test_kappa_in_z_is_that_of_PtHP(name):
    """κ(PᵀHP) from the curvature code (dense and Lanczos) equals the extreme eigenvalues of Pᵀ H P formed
    here from the dense Hessian and the operator's dense P."""
    model, x, y = problem()
    opt = train(model, x, y, name, 0.02, power=0.5, beta2=0.99)
    params = list(model.parameters())
    h = dense_hessian(model, F.mse_loss, [(x, y)])
    p_matrix = opt.preconditioner_operator(params).dense()
    eig = torch.linalg.eigvalsh(p_matrix.T @ h @ p_matrix)
    dense = measure_curvature(model, F.mse_loss, [(x, y)], optimizer=opt, space="z", method="dense")
    lanczos = measure_curvature(model, F.mse_loss, [(x, y)], optimizer=opt, space="z", method="lanczos",
                                tol=1e-10, max_matvecs=200)
    for r in (dense, lanczos):
        assert r.lam_max == pytest.approx(float(eig[-1]), rel=1e-8)
        assert r.lam_min == pytest.approx(float(eig[0]), rel=1e-6, abs=1e-10 * float(eig[-1]))


@pytest.mark.parametrize("name", ["full_matrix", "kronecker"])
def test_resume_from_state_dict_is_exact(name):
    """The cached roots are state: 3 steps, a state_dict round-trip into a fresh optimizer, 3 more steps equal 6."""
    model, x, y = problem()
    twin = problem()[0]
    hyper = {"power": 0.5, "beta2": 0.9, "update_every": 2, "momentum": 0.5}
    idxs = batches(x, y)
    straight = build_optimizer(model.parameters(), name, lr=0.02, **hyper)
    first = build_optimizer(twin.parameters(), name, lr=0.02, **hyper)
    for k, idx in enumerate(idxs):
        for mdl, opt in ((model, straight), (twin, first)):
            opt.zero_grad()
            F.mse_loss(mdl(x[idx]), y[idx]).backward()
            opt.step()
        if k == 2:
            saved = first.state_dict()
            first = build_optimizer(twin.parameters(), name, lr=0.02, **hyper)
            first.load_state_dict(saved)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_l2_in_z_is_decoupled_decay_for_any_P():
    """½λ‖z‖² with z = P⁻¹p steps p by −η(Mg + λp), whatever P is: full_matrix + l2 in z = the full_matrix
    step plus η λ p (formed here from the optimizer without the penalty)."""
    model, x, y = problem()
    twin = problem()[0]
    lam, lr = 0.1, 0.02
    with_decay = build_optimizer(model.parameters(), "full_matrix", lr=lr, regularization="l2", variable="z",
                                 strength=lam)
    plain = build_optimizer(twin.parameters(), "full_matrix", lr=lr)
    for idx in batches(x, y):
        set_params(twin, flat(model.parameters()))
        before = flat(model.parameters())
        for mdl, opt in ((model, with_decay), (twin, plain)):
            opt.zero_grad()
            F.mse_loss(mdl(x[idx]), y[idx]).backward()
            opt.step()
        expected = flat(twin.parameters()) - lr * lam * before
        assert np.abs(flat(model.parameters()) - expected).max() <= 1e-12


def test_refusals_name_the_key():
    model, _, _ = problem()
    big = nn.Linear(100, 41)
    assert sum(p.numel() for p in big.parameters()) > FULL_MATRIX_MAX_PARAMS
    with pytest.raises(ConfigError, match=rf"preconditioner: .*at most {FULL_MATRIX_MAX_PARAMS} parameters"):
        build_optimizer(big.parameters(), "full_matrix", lr=0.1)
    with pytest.raises(ConfigError, match="preconditioner: .*matrix-shaped weights"):
        build_optimizer([nn.Parameter(torch.zeros(5))], "kronecker", lr=0.1)
    for reg in ({"regularization": "l1", "variable": "z", "strength": 0.1},
                {"regularization": "l1", "variable": "p", "strength": 0.1},  # the prox reads M element-wise
                {"regularization": "gradnorm", "variable": "z", "strength": 0.1}):
        with pytest.raises(ConfigError, match=r"regularization\.(variable|form): .*not diagonal"):
            build_optimizer(model.parameters(), "kronecker", lr=0.1, **reg)
    with pytest.raises(ConfigError, match=r"power: expected a finite number in \[0, 1\]"):
        build_optimizer(model.parameters(), "kronecker", lr=0.1, power=1.5)
    with pytest.raises(ConfigError, match=r"power: expected a finite number in \[0, 1\]"):
        build_optimizer(model.parameters(), "adam", lr=0.1, power=-0.5)
    # allowed: l1 by subgradient in p, gradnorm in p, l2 in either variable
    for reg in ({"regularization": "l1", "variable": "p", "form": "subgradient", "strength": 0.1},
                {"regularization": "l2", "variable": "z", "strength": 0.1}):
        build_optimizer(model.parameters(), "kronecker", lr=0.1, **reg)


def test_matrix_preconditioners_train_alone_in_packs():
    assert set(NON_DIAGONAL) == set(MATRIX_PRECONDITIONERS)
    for name in NON_DIAGONAL:
        assert name in alone_reason({"preconditioner": {"name": name}})
    assert alone_reason({"preconditioner": {"name": "adam"}}) is None
