"""The local rate of (preconditioned) gradient descent near a minimizer: predicted vs observed.

On a quadratic loss with Hessian ``H``, gradient descent in the intrinsic variables ``z``
(``p = P z``, ``P`` diagonal and fixed) with step ``η`` is ``p ← p − η P Pᵀ ∇f(p)``. In ``z``
the gradient ``g_z = Pᵀ∇f`` obeys ``g_z ← (I − η A) g_z`` with ``A = PᵀHP``, so at the
optimal step ``η* = 2/(λmax(A) + λmin(A))`` the worst-case contraction per step is

    ρ = max_λ |1 − η*λ| = (κ − 1)/(κ + 1),   κ = κ(PᵀHP),

attained on the eigenvectors of ``λmax`` and ``λmin``. The observed rate is measured on the
real model and loss (full batch, float64, gradients by autograd) as the geometric mean
contraction of ``‖g_z‖`` over the second half of the run, after the faster modes have died out.
Rates close to 1 are compared through their exponents ``−log ρ`` (≈ 2/κ for large κ).

On a quadratic this is linear algebra (an identity for any fixed ``P``). On a non-quadratic loss
(softmax regression) it is the theorem's local claim: ``H`` is taken at a near-stationary ``p*`` and
GD starts from a perturbation of ``p*``; the observed rate is that of the real nonlinear iteration.
Exact invariances (the softmax shift) are null directions of ``H`` that GD never moves along (the
gradient is orthogonal to them): κ is then κ⁺ on their complement, in ``z`` the complement of
``P⁻¹V`` (``PᵀHP P⁻¹v = PᵀHv = 0``).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from precond.hessian import dense_hessian
from precond.invariance import projected_eigenvalues


@dataclass
class RateResult:
    """One preconditioner's predicted and observed rate."""

    name: str
    kappa_p: float
    kappa_z: float
    step: float
    predicted: float
    observed: float
    steps: int
    #: ‖g_z‖ at every step of the run (for plots)
    norms: list = field(default_factory=list, repr=False)

    @property
    def exponent_error(self) -> float:
        """``|log ρ_obs − log ρ_pred| / |log ρ_pred|``: the relative error of the rate exponent."""
        return abs(math.log(self.observed) - math.log(self.predicted)) / abs(math.log(self.predicted))


def _kappa(matrix: Tensor, nulls: Optional[Tensor] = None) -> tuple[float, float, float]:
    """κ, λmax, λmin of ``matrix`` on the orthogonal complement of ``nulls`` (None: everywhere)."""
    eig = torch.linalg.eigvalsh(matrix) if nulls is None else projected_eigenvalues(matrix, nulls)
    return float(eig[-1]) / float(eig[0]), float(eig[-1]), float(eig[0])


def gd_rate(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, P: Optional[Tensor], name: str,
            decades: float = 8.0, max_steps: int = 200_000, hessian: Optional[Tensor] = None,
            nulls: Optional[Tensor] = None) -> RateResult:
    """Run preconditioned GD at ``η*`` from the model's current parameters and compare rates.

    ``P`` is the flat diagonal of the preconditioner over ``model.parameters()`` (None: ``P = I``).
    ``hessian``: ``H`` at the minimizer (default: at the current point, right for a quadratic);
    ``nulls``: exact invariance directions (n × m) in ``p``, projected out of κ.
    Runs until ``‖g_z‖`` has dropped by ``10^decades`` (or ``max_steps``; 8 decades stay well
    above float64 round-off) and measures the rate over the second half of the run, where the
    slowest modes dominate. The model must be float64.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    h = dense_hessian(model, loss_fn, [(x, y)]) if hessian is None else hessian
    n = h.shape[0]
    scale = torch.ones(n, dtype=h.dtype, device=h.device) if P is None else P.to(h)
    a = scale[:, None] * h * scale[None, :]
    kappa_p, _, _ = _kappa(h, nulls)
    kappa_z, lam_max, lam_min = _kappa(a, None if nulls is None else nulls / scale[:, None])
    eta = 2.0 / (lam_max + lam_min)
    predicted = (kappa_z - 1.0) / (kappa_z + 1.0)
    norms: list[float] = []
    with torch.enable_grad():
        for _ in range(max_steps):
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            g = torch.cat([p.grad.reshape(-1) for p in params])
            g_z = scale * g
            norms.append(float(g_z.norm()))
            if norms[-1] < norms[0] * 10.0 ** (-decades):
                break
            step = eta * scale * g_z  # p ← p − η P Pᵀ g
            with torch.no_grad():
                start = 0
                for p in params:
                    p.sub_(step[start:start + p.numel()].view_as(p))
                    start += p.numel()
    half = len(norms) // 2
    observed = (norms[-1] / norms[half]) ** (1.0 / (len(norms) - 1 - half))
    return RateResult(name, kappa_p, kappa_z, eta, predicted, observed, len(norms), norms)


def jacobi_P(model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor) -> Tensor:
    """``P = diag(H)^{-1/2}``: the ideal fixed diagonal preconditioner (what standardization approximates)."""
    h = dense_hessian(model, loss_fn, [(x, y)])
    return torch.diagonal(h).clamp_min(1e-300).rsqrt()
