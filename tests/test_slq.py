"""Stochastic Lanczos quadrature against closed forms: Gauss quadrature is exact for low-degree polynomials."""
import torch

from precond.slq import density_on_grid, lanczos_tridiagonal, slq


def _matrix(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.logspace(-2, 2, n, dtype=torch.float64)
    return q @ torch.diag(lam) @ q.T, lam


def test_quadrature_is_exact_for_polynomials_of_degree_below_2m():
    a, _ = _matrix()
    v = torch.randn(30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v /= v.norm()
    theta, tau = lanczos_tridiagonal(lambda u: a @ u, v, steps=6)
    assert theta.numel() == 6 and float(tau.sum()) == torch.tensor(1.0, dtype=torch.float64).item() or \
        abs(float(tau.sum()) - 1) < 1e-12
    for k in range(12):  # degree ≤ 2·6 − 1
        exact = float(v @ torch.linalg.matrix_power(a, k) @ v)
        assert abs(float((tau * theta**k).sum()) - exact) <= 1e-9 * max(abs(exact), 1.0)


def test_full_lanczos_recovers_every_eigenvalue_and_slq_moments_estimate_the_trace():
    a, lam = _matrix()
    quad = slq(lambda u: a @ u, 30, steps=30, vectors=64)
    per_vector = quad.nodes[:30]
    torch.testing.assert_close(per_vector, lam, rtol=1e-8, atol=1e-10)
    # E[vᵀAv] = tr(A)/n for unit Rademacher v; 64 probes: within a few standard errors
    assert abs(quad.moment(1) - float(lam.mean())) < 0.1 * float(lam.mean())
    grid = torch.linspace(-50, 150, 20001, dtype=torch.float64)
    mass = float(density_on_grid(quad, grid, width=1.0).sum() * (grid[1] - grid[0]))
    assert abs(mass - 1.0) < 1e-6
