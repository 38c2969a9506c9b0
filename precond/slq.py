"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

For a unit random vector ``v``, ``m`` Lanczos steps give a tridiagonal ``T = S Θ Sᵀ``, and the
Gauss quadrature ``Σ_k τ_k f(θ_k)`` with ``τ_k = S[0, k]²`` equals ``vᵀ f(A) v`` exactly for every
polynomial ``f`` of degree ≤ ``2m − 1``. With Rademacher ``v`` scaled to unit norm,
``E[vᵀ f(A) v] = tr f(A)/n``, so averaging the nodes ``θ`` with weights ``τ`` over vectors
estimates the spectral density ``(1/n) Σ_i δ(λ − λ_i)``; :func:`density_on_grid` broadens each
node by a Gaussian for a plot. Matrix-free: one product with ``A`` per step.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Quadrature:
    """Nodes (Ritz values) and weights of every random vector's Gauss quadrature, concatenated;
    the weights of each vector sum to 1, and ``weights`` are divided by the number of vectors."""

    nodes: Tensor
    weights: Tensor
    vectors: int
    steps: int

    def moment(self, k: int) -> float:
        """Estimate of ``tr(A^k)/n``."""
        return float((self.weights * self.nodes**k).sum())


def lanczos_tridiagonal(matvec: Callable[[Tensor], Tensor], q: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Eigenvalues ``θ`` and first-row weights ``S[0, :]²`` of the Lanczos tridiagonal from unit ``q``
    (full reorthogonalization; stops early when the Krylov space is invariant)."""
    n = q.numel()
    basis = torch.empty(min(steps, n), n, dtype=q.dtype, device=q.device)
    alphas, betas = [], []
    q_prev, beta_prev = None, 0.0
    for j in range(basis.shape[0]):
        basis[j] = q
        w = matvec(q)
        alpha = float(q @ w)
        w = w - alpha * q - (beta_prev * q_prev if q_prev is not None else 0.0)
        for _ in range(2):  # full reorthogonalization (twice is enough)
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        if j + 1 == basis.shape[0] or beta <= 1e-12 * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        q_prev, q, beta_prev = q, w / beta, beta
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(t)
    return theta, s[0, :] ** 2


def slq(matvec: Callable[[Tensor], Tensor], n: int, steps: int = 80, vectors: int = 8, seed: int = 0,
        device="cpu", dtype=torch.float64) -> Quadrature:
    """SLQ with ``vectors`` Rademacher probes of ``steps`` Lanczos steps each."""
    g = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(vectors):
        v = (torch.randint(0, 2, (n,), generator=g) * 2 - 1).to(device=device, dtype=dtype)
        theta, tau = lanczos_tridiagonal(matvec, v / v.norm(), steps)
        nodes.append(theta)
        weights.append(tau / vectors)
    return Quadrature(torch.cat(nodes), torch.cat(weights), vectors, steps)


def density_on_grid(quad: Quadrature, grid: Tensor, width: float) -> Tensor:
    """The density ``Σ τ_k N(λ; θ_k, width²)`` on ``grid`` (integrates to 1 over the real line)."""
    z = (grid[:, None] - quad.nodes[None, :]) / width
    return (quad.weights[None, :] * torch.exp(-0.5 * z**2)).sum(dim=1) / (width * (2 * torch.pi) ** 0.5)
