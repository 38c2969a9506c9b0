"""Condition numbers of a symmetric spectrum: κ where it is defined, κ⁺ over the non-null part.

The one place these are computed (curvature measurements, the hidden-variable matrices of
normalization, the standardization check all call it), so every κ⁺ in a report means the same.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

#: eigenvalues with |λ| ≤ NULL_RTOL·λmax are the null space (scale invariance makes exact zeros)
NULL_RTOL = 1e-7


def kappa_plus_of(eigenvalues: Tensor, rtol: float = NULL_RTOL) -> tuple[Optional[float], int]:
    """``κ⁺ = λmax / min{λ > rtol·λmax}`` and the number of eigenvalues with ``|λ| ≤ rtol·λmax``.

    κ⁺ is None when a clearly negative eigenvalue (``λ < −rtol·λmax``) exists: the Hessian is
    indefinite there and no condition number describes it.
    """
    lam_max = float(eigenvalues[-1])
    if lam_max <= 0:
        return None, 0
    cut = rtol * lam_max
    null_dim = int(((eigenvalues >= -cut) & (eigenvalues <= cut)).sum())
    positive = eigenvalues[eigenvalues > cut]
    if float(eigenvalues[0]) < -cut or positive.numel() == 0:
        return None, null_dim
    return lam_max / float(positive[0]), null_dim


def kappa_of(lam_max: float, lam_min: float) -> tuple[Optional[float], Optional[str]]:
    """``κ = λmax/λmin`` when ``λmin > 0``; else None and a flag (``indefinite`` or ``singular``)."""
    if lam_min > 0:
        return lam_max / lam_min, None
    return None, "indefinite" if lam_min < 0 else "singular"
