"""Non-diagonal preconditioners: a dense ``P`` (full-matrix AdaGrad/RMSprop) and Kronecker factors (Shampoo).

Both estimate the gradient's second moment ``C = E[g gᵀ]`` and precondition with a power of it,
``M = (Ĉ + εI)^{-q}`` (docs/theory.md §2): the matrix form of the diagonal family's ``D = v̂^q + ε``.

* **full_matrix** keeps ``C`` itself over all the parameters of a param group (``n × n``): ``d = M g``.
  ``C ← C + g gᵀ`` (AdaGrad, ``beta2 = null``) or ``C ← β₂C + (1−β₂) g gᵀ`` with bias correction
  ``Ĉ = C/(1−β₂ᵏ)`` (RMSprop/Adam's ``v̂``). It can represent every kind of ill-conditioning, at
  ``O(n²)`` memory and an ``O(n³)`` eigendecomposition per refresh: small models only
  (:data:`FULL_MATRIX_MAX_PARAMS`).
* **kronecker** keeps, for each weight ``G`` reshaped to ``(m, k)`` (a Conv2d weight as
  ``(out, in·kh·kw)``), the factors ``L = Σ G Gᵀ`` (``m × m``) and ``R = Σ Gᵀ G`` (``k × k``), accumulated
  like ``C``. When ``C = A ⊗ B`` exactly, ``L = tr(B)·A`` and ``R = tr(A)·B``, so with the scale-free left
  factor ``Ā = L / (tr L / m)`` the estimate is ``C ≈ Ā ⊗ (R/m)`` and::

      M = (Ā + εI)^{-q} ⊗ (R̂/m + εI)^{-q},      d = vec((Ā + εI)^{-q} G (R̂/m + εI)^{-q})

  Up to a scalar (absorbed by the learning rate) ``q = ¼`` is Shampoo's original exponent and ``q = ½``
  is the Kronecker approximation of full-matrix AdaGrad ("squared Shampoo"). It represents the
  correlation of a layer's inputs (``R``) and of its outputs (``L``), not their mixture. Parameters
  with fewer than two dimensions (biases) get the diagonal form ``D = (v̂ + ε)^q``.

Both refresh their matrix roots every ``update_every`` steps (the costly eigendecompositions) and use
the cached roots in between; the roots live in the optimizer state, so a resumed run steps exactly as
an uninterrupted one. ``P = M^{1/2}`` (symmetric) is what :meth:`blocks` exposes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor

from precond.errors import ConfigError
from precond.preconditioner_operator import Dense, Diagonal, Kronecker
from precond.preconditioners import EPS, MOMENTUM, POWER, Preconditioner, PreconditionerSettings
from precond.settings import Int, Num, Text, setting

#: full_matrix keeps an n × n second moment and eigendecomposes it: refused above this many parameters
FULL_MATRIX_MAX_PARAMS = 4096
#: kronecker: refused when a factor would be larger than this (an m × m or k × k eigendecomposition)
KRONECKER_MAX_FACTOR = 4096


def matrix_power(c: Tensor, q: float, eps: float) -> Tensor:
    """``(C + εI)^{-q}`` of a symmetric PSD ``C`` by its eigendecomposition (negative round-off clamped to 0)."""
    lam, u = torch.linalg.eigh(c)
    return (u * (lam.clamp_min(0.0) + eps).pow(-q)) @ u.T


def symmetric_sqrt(m: Tensor) -> Tensor:
    """``M^{1/2}`` of a symmetric PSD ``M``."""
    lam, u = torch.linalg.eigh(m)
    return (u * lam.clamp_min(0.0).sqrt()) @ u.T


def _accumulate(state: dict, key: str, outer: Tensor, beta2: Optional[float]) -> None:
    """``S ← S + X`` (``beta2`` None) or ``S ← β₂S + (1−β₂)X``."""
    if key not in state:
        state[key] = torch.zeros_like(outer)
    if beta2 is None:
        state[key].add_(outer)
    else:
        state[key].mul_(beta2).add_(outer, alpha=1.0 - beta2)


def _corrected(s: Tensor, beta2: Optional[float], step: int) -> Tensor:
    """``Ŝ = S/(1−β₂ᵏ)`` for an exponential average (bias correction), ``S`` for a sum."""
    return s if beta2 is None else s / (1.0 - beta2**step)


def _refresh(state: dict, key: str, step: int, every: int) -> bool:
    """Whether the cached roots are due: at the first step and every ``every`` steps after."""
    return key not in state or (step - 1) % every == 0


class FullMatrix(Preconditioner):
    """``d = (Ĉ + εI)^{-q} g`` with ``C`` the second moment of the whole group's flat gradient."""

    namespace = "full_matrix"
    diagonal = False

    def transform(self, ctxs, directions):
        out = []
        for ctx, g in zip(ctxs, directions):
            group, state = ctx.group, ctx.states[0]
            flat = torch.cat([x.reshape(-1) for x in g])
            if state.get(self.key("n"), flat.numel()) != flat.numel():
                raise RuntimeError("full_matrix: the set of parameters with a gradient changed between steps")
            state[self.key("n")] = flat.numel()
            step = int(state.get(self.key("step"), 0)) + 1
            state[self.key("step")] = step
            _accumulate(state, self.key("second_moment"), torch.outer(flat, flat), group["beta2"])
            if _refresh(state, self.key("root"), step, group["update_every"]):
                c = _corrected(state[self.key("second_moment")], group["beta2"], step)
                state[self.key("root")] = matrix_power(c, group["power"], group["eps"])
            d = state[self.key("root")] @ flat
            out.append(_split(d, g))
        return out

    def blocks(self, group, states, params, starts):
        root = self._require(states[0] if states else {}, self.key("root"))
        if any(b != a + p.numel() for a, b, p in zip(starts, starts[1:], params)):
            raise ValueError("full_matrix: its P spans the whole group; pass the group's parameters in order")
        return [Dense(starts[0], symmetric_sqrt(root))]


class KroneckerFactors(Preconditioner):
    """Shampoo-style ``d = vec((Ā + εI)^{-q} G (R̂/m + εI)^{-q})`` per weight; ``(v̂ + ε)^{-q}`` for the rest."""

    namespace = "kronecker"
    diagonal = False

    def transform(self, ctxs, directions):
        out = []
        for ctx, g in zip(ctxs, directions):
            group = ctx.group
            q, eps, beta2, every = group["power"], group["eps"], group["beta2"], group["update_every"]
            ds = []
            for grad, state in zip(g, ctx.states):
                step = int(state.get(self.key("step"), 0)) + 1
                state[self.key("step")] = step
                if grad.ndim < 2:
                    _accumulate(state, self.key("second_moment"), grad * grad, beta2)
                    v = _corrected(state[self.key("second_moment")], beta2, step)
                    ds.append(grad * (v + eps).pow(-q))
                    continue
                m = grad.shape[0]
                mat = grad.reshape(m, -1)
                _accumulate(state, self.key("left"), mat @ mat.T, beta2)
                _accumulate(state, self.key("right"), mat.T @ mat, beta2)
                if _refresh(state, self.key("left_root"), step, every):
                    left = _corrected(state[self.key("left")], beta2, step)
                    right = _corrected(state[self.key("right")], beta2, step)
                    trace = float(torch.trace(left)) / m
                    scaled = left / trace if trace > 0 else left
                    state[self.key("left_root")] = matrix_power(scaled, q, eps)
                    state[self.key("right_root")] = matrix_power(right / m, q, eps)
                d = state[self.key("left_root")] @ mat @ state[self.key("right_root")]
                ds.append(d.reshape(grad.shape))
            out.append(ds)
        return out

    def blocks(self, group, states, params, starts):
        out = []
        for param, state, start in zip(params, states, starts):
            self._require(state, self.key("step"))
            if param.ndim < 2:
                v = _corrected(state[self.key("second_moment")], group["beta2"], int(state[self.key("step")]))
                out.append(Diagonal(start, (v + group["eps"]).pow(-group["power"] / 2).reshape(-1)))
            else:
                out.append(Kronecker(start, symmetric_sqrt(state[self.key("left_root")]),
                                     symmetric_sqrt(state[self.key("right_root")])))
        return out


def _split(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """A flat vector back into tensors shaped like ``like``."""
    out, start = [], 0
    for x in like:
        out.append(flat[start:start + x.numel()].view_as(x))
        start += x.numel()
    return out


@dataclass(frozen=True)
class MatrixPreconditionerSettings(PreconditionerSettings):
    """What the two matrix preconditioners share: the power, damping, accumulation and refresh interval."""

    DIAGONAL: ClassVar[bool] = False

    power: float = setting(POWER, 0.5, doc="q in M = (Ĉ + εI)^(-q)")
    eps: float = setting(EPS, 1e-8, doc="ε: damping of the second moment's eigenvalues")
    beta2: Optional[float] = setting(Num(0, 1, hi_open=True, optional=True), None,
                                     doc="null: sum (AdaGrad); a rate: exponential average with bias correction")
    update_every: int = setting(Int(lo=1, hi=1_000_000), 1, doc="steps between refreshes of the matrix roots")
    momentum: float = setting(MOMENTUM, 0.0)

    def check_params(self, params: list[Tensor]) -> None:
        """Refuse parameters this preconditioner cannot hold (before any state is built)."""


@dataclass(frozen=True)
class FullMatrixSettings(MatrixPreconditionerSettings):
    """Full-matrix AdaGrad (``beta2: null``) or RMSprop (``beta2`` a rate): a dense ``P`` over the model."""

    NAME: ClassVar[str] = "full_matrix"
    name: str = setting(Text(), "full_matrix")

    def check_params(self, params):
        n = sum(p.numel() for p in params)
        if n > FULL_MATRIX_MAX_PARAMS:
            raise ConfigError("preconditioner", f"a model with at most {FULL_MATRIX_MAX_PARAMS} parameters for "
                              f"full_matrix (its P is a dense n × n matrix; this model has {n})", "full_matrix",
                              "use preconditioner=kronecker, or a smaller model (e.g. model.widths=[16])")


@dataclass(frozen=True)
class KroneckerSettings(MatrixPreconditionerSettings):
    """Shampoo-style Kronecker factors for every matrix-shaped weight (Linear, Conv2d)."""

    NAME: ClassVar[str] = "kronecker"
    name: str = setting(Text(), "kronecker")

    def check_params(self, params):
        shapes = [tuple(p.shape) for p in params if p.ndim >= 2]
        if not shapes:
            raise ConfigError("preconditioner", "a model with matrix-shaped weights (Linear or Conv2d) for "
                              "kronecker", "kronecker", "use a diagonal preconditioner (adam, rmsprop)")
        for shape in shapes:
            m, k = shape[0], int(torch.Size(shape[1:]).numel())
            if max(m, k) > KRONECKER_MAX_FACTOR:
                raise ConfigError("preconditioner", f"weights whose Kronecker factors are at most "
                                  f"{KRONECKER_MAX_FACTOR} × {KRONECKER_MAX_FACTOR} (a weight of shape {shape} "
                                  f"needs {m} × {m} and {k} × {k})", "kronecker", "use a diagonal preconditioner")


#: name → (link class, settings class) of the non-diagonal preconditioners
MATRIX_PRECONDITIONERS = {
    "full_matrix": (FullMatrix, FullMatrixSettings),
    "kronecker": (KroneckerFactors, KroneckerSettings),
}
