"""Measure Hessian conditioning: ``κ(H)`` in ``p`` and ``κ(PᵀHP)`` in ``z`` (docs/theory.md §1, §5).

In the intrinsic variables ``z`` (``p = P z``, ``P = D^{-1/2}`` read from the live
optimizer's state at the step of measurement) the Hessian is ``PᵀHP``. The
operator, its dense form and Lanczos live in :mod:`precond.hessian`; this module
chooses between them and reports.

Non-convex Hessians have ``λmin < 0``: ``kappa`` is reported only when
``λmin > 0``; otherwise it is None and ``flag`` says why (never a clipped κ).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from precond.errors import ConfigError
from precond.hessian import (
    BN_MODE,
    HVP_MODE,
    Batch,
    HessianOperator,
    dense_hessian,
    lanczos_extremes,
    measurement_mode,
)
from precond.settings import Choice, Flag, Int, Num, Seq, Settings, setting
from precond.spectrum import NULL_RTOL, kappa_of, kappa_plus_of  # noqa: F401 (re-exported)

SPACES = ("p", "z")
METHODS = ("auto", "lanczos", "dense")
#: the dense path holds H (n × n float64) and a copy: refuse it above this many bytes
DENSE_MAX_BYTES = 2 * 1024**3
#: the Lanczos basis (max_matvecs × n) switches to float32 above this many bytes
LANCZOS_FLOAT64_MAX_BYTES = 2 * 1024**3


@dataclass
class CurvatureResult:
    """Extreme eigenvalues of ``H`` (space p) or ``PᵀHP`` (space z)."""

    space: str
    lam_max: float
    lam_min: float
    kappa: Optional[float]
    flag: Optional[str]
    matvecs: int
    converged: bool
    seconds: float
    method: str
    bn_mode: str
    n_params: int
    #: all eigenvalues (dense) or the final Ritz values (Lanczos), ascending; not logged
    eigenvalues: Optional[Tensor] = field(default=None, repr=False, compare=False)
    #: dense only: κ⁺ = λmax/λmin⁺ over the non-null spectrum, and the null-space dimension
    kappa_plus: Optional[float] = None
    null_dim: Optional[int] = None

    def as_metrics(self, prefix: str = "curvature") -> dict:
        p = f"{prefix}/{self.space}"
        metrics = {f"{p}/lam_max": self.lam_max, f"{p}/lam_min": self.lam_min, f"{p}/kappa": self.kappa,
                   f"{p}/matvecs": self.matvecs, f"{p}/converged": self.converged}
        if self.method == "dense":
            metrics.update({f"{p}/kappa_plus": self.kappa_plus, f"{p}/null_dim": self.null_dim})
        return metrics


def flat_P(optimizer, params: Sequence[Tensor]) -> Optional[Tensor]:
    """``P = D^{-1/2}`` as a flat vector over ``params`` from the optimizer's current state (None: ``P = I``).
    Raises for a non-diagonal ``P`` (use :func:`preconditioner_of`)."""
    op = optimizer.preconditioner_operator(params)
    if not op.blocks:
        return None
    flat = op.diagonal()
    if flat is None:
        raise ValueError("this preconditioner's P is not diagonal: read it with preconditioner_of()")
    return flat


def preconditioner_of(optimizer, params: Sequence[Tensor]):
    """``P`` over ``params`` as the flat vector of a diagonal ``P``, the operator of a non-diagonal one
    (:class:`~precond.preconditioner_operator.PreconditionerOperator`), or None for ``P = I``."""
    op = optimizer.preconditioner_operator(params)
    if not op.blocks:
        return None
    flat = op.diagonal()
    return op if flat is None else flat


def dense_bytes(n_params: int) -> int:
    """Memory the dense path needs: the float64 Hessian and one copy of it."""
    return 2 * 8 * n_params * n_params


def uses_dense(method: str, n_params: int, dense_threshold: int = 1500) -> bool:
    """Whether ``method`` measures densely: ``dense``, or ``auto`` at most ``dense_threshold`` parameters."""
    return method == "dense" or (method == "auto" and n_params <= dense_threshold)


def lanczos_dtype(n_params: int, max_matvecs: int, runs: int = 1):
    """float64 Lanczos bases, float32 when ``runs`` bases of ``min(max_matvecs, n) × n`` would pass
    ``LANCZOS_FLOAT64_MAX_BYTES``."""
    big = runs * n_params * min(max_matvecs, n_params) * 8 > LANCZOS_FLOAT64_MAX_BYTES
    return torch.float32 if big else torch.float64


def require_dense_fits(n_params: int) -> None:
    """Refuse the dense Hessian of a model whose ``H`` would exceed ``DENSE_MAX_BYTES``."""
    if dense_bytes(n_params) > DENSE_MAX_BYTES:
        raise ConfigError("method", f"a model small enough for the dense Hessian (needs "
                          f"{dense_bytes(n_params) / 1024**3:.1f} GiB for {n_params} parameters, limit "
                          f"{DENSE_MAX_BYTES / 1024**3:.0f} GiB)", "dense", "use method lanczos")


def measure_curvature(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Iterable[Batch],
    optimizer=None,
    space: str = "p",
    tol: float = 1e-3,
    max_matvecs: int = 200,
    method: str = "auto",
    bn_mode: str = "train",
    dense_threshold: int = 1500,
    hvp_mode: str = "double_backward",
    check_determinism: bool = True,
) -> CurvatureResult:
    """Extreme eigenvalues and κ of ``H`` (``space="p"``) or ``PᵀHP`` (``space="z"``).

    Args:
        model, loss_fn, batches: the loss is ``mean_b loss_fn(model(x_b), y_b)`` over
            ``batches``, a list of ``(inputs, targets)`` used unchanged at every product.
        optimizer: a precond optimizer; required for ``space="z"`` (``P`` is read
            from its state now, without stepping).
        method: ``auto`` (dense below ``dense_threshold`` parameters, else Lanczos),
            ``lanczos`` or ``dense``.
        bn_mode: ``train`` (batch statistics) or ``eval`` (running statistics).
        hvp_mode: ``double_backward`` or ``forward_over_reverse``.
    """
    CurvatureSettings(method=method, spaces=(space,), tol=tol, max_matvecs=max_matvecs, bn_mode=bn_mode,
                      hvp_mode=hvp_mode)  # the one check of these values
    if space == "z" and (optimizer is None or not hasattr(optimizer, "preconditioner_operator")):
        raise ValueError("space='z' needs the precond optimizer whose preconditioner P defines z = P⁻¹p")
    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    scale = preconditioner_of(optimizer, params) if space == "z" else None
    use_dense = uses_dense(method, n, dense_threshold)
    if use_dense:
        require_dense_fits(n)
    with measurement_mode(model, bn_mode):
        if use_dense:
            h = dense_hessian(model, loss_fn, batches)
            if isinstance(scale, Tensor):
                s = scale.to(h.device)
                h = s[:, None] * h * s[None, :]
            elif scale is not None:
                p_matrix = scale.dense().to(h.device)
                h = p_matrix.T @ h @ p_matrix
                h = (h + h.T) / 2  # symmetric to round-off, as eigvalsh assumes
            eig = torch.linalg.eigvalsh(h)
            lam_max, lam_min, matvecs, converged = float(eig[-1]), float(eig[0]), n, True
            ritz = eig.cpu()
        else:
            op = HessianOperator(model, loss_fn, batches, scale=scale, hvp_mode=hvp_mode)
            op.check_against_double_backward()
            if check_determinism:
                op.check_determinism()
            lam_max, lam_min, matvecs, converged, ritz = lanczos_extremes(
                op.matvec, n, params[0].device, tol=tol, max_matvecs=max_matvecs,
                dtype=lanczos_dtype(n, max_matvecs))
            matvecs = op.matvecs
    kappa, flag = kappa_of(lam_max, lam_min)
    kappa_plus, null_dim = kappa_plus_of(ritz) if use_dense else (None, None)
    return CurvatureResult(space=space, lam_max=lam_max, lam_min=lam_min, kappa=kappa, flag=flag,
                           matvecs=matvecs, converged=converged, seconds=time.perf_counter() - t0,
                           method="dense" if use_dense else "lanczos", bn_mode=bn_mode, n_params=n,
                           eigenvalues=ritz, kappa_plus=kappa_plus, null_dim=null_dim)




@dataclass(frozen=True)
class CurvatureSettings(Settings):
    """When and how to measure during training (the ``curvature`` config group).

    ``every`` steps (a multiple of ``eval_every``) and at the last step, over ``batches`` fixed
    training batches of ``batch_size`` (null: the training batch size), in the ``spaces`` p (κ(H))
    and z (κ(PᵀHP)); Lanczos stops at relative Ritz residual ``tol`` or ``max_matvecs``.
    """

    method: str = setting(Choice(tuple(METHODS)), "lanczos", fix="dense: exact extremes for small models")
    every: int = setting(Int(lo=1), 500, doc="steps between measurements")
    batches: int = setting(Int(lo=1, hi=10_000), 4, doc="fixed batches the Hessian is averaged over")
    batch_size: Optional[int] = setting(Int(lo=1, optional=True), None, fix="or null for the training batch_size")
    spaces: tuple = setting(Seq(Choice(SPACES), 1, len(SPACES), distinct=True), ("p", "z"),
                            fix="e.g. curvature.spaces=[p,z]")
    tol: float = setting(Num(0, 1, lo_open=True, hi_open=True), 1e-3, doc="relative Ritz residual")
    max_matvecs: int = setting(Int(lo=1, hi=100_000), 100)
    bn_mode: str = setting(BN_MODE, "train")
    hvp_mode: str = setting(HVP_MODE, "double_backward")
    layers: bool = setting(Flag(), True, doc="κ(ĤᵀĤ) of every Linear layer's extended input")
    enabled: bool = setting(Flag(), True, doc="false: configured but not measured (a tuned sweep's tuning runs)")
    at_start: bool = setting(Flag(), True, doc="also measure at step 0 (false: every `every` steps and at the end)")
