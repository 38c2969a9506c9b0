"""The Hessian of a mean batch loss as a linear operator, densely for small models, and its
extreme eigenvalues (docs/theory.md §5).

The loss is the mean over a fixed list of batches,
``L(p) = (1/B) Σ_b loss_fn(model(x_b), y_b)``, so the operator is the same at
every call. Its Hessian ``H`` (optionally ``P H P`` for a diagonal ``P`` given as
a flat vector) is applied to vectors by

* double backward: ``Hv = ∇ₚ[∇L(p)ᵀ stopgrad(v)]`` (default), or
* forward-over-reverse: ``Hv = JVP(∇L, p; v)`` (``torch.func``); it is cross-checked
  against double backward on one vector before use and refused when they disagree.

The dense Hessian (small models) is built row by row with the same double
backward in float64: ``H e_i = ∇ₚ[∇L(p)_i]``. ``torch.func.hessian``
(``jacfwd(jacrev)``) is *not* used: on torch 2.14 it returns an asymmetric,
wrong matrix for train-mode BatchNorm. The dense path also refuses a result whose
asymmetry ``‖H − Hᵀ‖_max`` exceeds ``1e-8·‖H‖_max``.

Extreme eigenvalues of a symmetric operator: Lanczos with full
reorthogonalization (float64 tridiagonal, Ritz residual
``|β_k s_{k,i}| ≤ tol·|θ_i|``).

BatchNorm: :func:`measurement_mode` makes the mode explicit (``train``: batch
statistics; ``eval``: running statistics) and restores all buffers, so measuring
never changes the model.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from precond.settings import Choice

Batch = tuple[Tensor, Tensor]
BN_MODES = ("train", "eval")
HVP_MODES = ("double_backward", "forward_over_reverse")
#: the rules of these two settings (the curvature settings use the same objects)
BN_MODE, HVP_MODE = Choice(BN_MODES), Choice(HVP_MODES)


@contextlib.contextmanager
def measurement_mode(model: nn.Module, bn_mode: str):
    """Put the model in ``bn_mode`` and restore its mode and all buffers afterwards.

    In ``train`` mode, BatchNorm layers drop their running statistics for the
    duration (they normalize with batch statistics, as in training, but update
    nothing), which also keeps ``torch.func`` transforms free of in-place updates.
    """
    BN_MODE.check("bn_mode", bn_mode)
    was_training = {m: m.training for m in model.modules()}
    saved = [b.detach().clone() for b in model.buffers()]
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    stats = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in bns]
    model.train(bn_mode == "train")
    if bn_mode == "train":
        for m in bns:
            m.running_mean, m.running_var, m.num_batches_tracked = None, None, None
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(bns, stats):
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)
        for m, t in was_training.items():
            m.training = t


class HessianOperator:
    """``v ↦ H v`` (optionally ``P H P v``) for the mean loss over fixed batches, on flat vectors.

    ``scale`` is ``P``: a flat vector for a diagonal ``P``, an operator with ``apply_P``/``apply_Pt``
    (:class:`~precond.preconditioner_operator.PreconditionerOperator`) for any other, None for ``P = I``;
    the product is then ``Pᵀ H P v``.
    Use it inside :func:`measurement_mode` (as :func:`measure_curvature` does) so that
    BatchNorm's mode is explicit and its running statistics are left alone.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batches: Iterable[Batch],
                 scale=None, hvp_mode: str = "double_backward"):
        HVP_MODE.check("hvp_mode", hvp_mode)
        self.model, self.loss_fn, self.batches = model, loss_fn, batches
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n = sum(p.numel() for p in self.params)
        self.scale = scale
        self.hvp_mode = hvp_mode
        self.matvecs = 0

    def _unflatten(self, v: Tensor) -> list[Tensor]:
        out, start = [], 0
        for p in self.params:
            out.append(v[start:start + p.numel()].view_as(p).to(p.dtype))
            start += p.numel()
        return out

    def _hvp(self, vs: list[Tensor]) -> list[Tensor]:
        total = [torch.zeros_like(p) for p in self.params]
        count = 0
        for x, y in self.batches:
            if self.hvp_mode == "double_backward":
                with torch.enable_grad():
                    loss = self.loss_fn(self.model(x), y)
                    grads = torch.autograd.grad(loss, self.params, create_graph=True)
                    hv = torch.autograd.grad(grads, self.params, grad_outputs=vs, allow_unused=True)
            else:
                hv = self._forward_over_reverse(x, y, vs)
            for t, h in zip(total, hv):
                if h is not None:
                    t.add_(h.detach())
            count += 1
        if count == 0:
            raise ValueError("measure_curvature needs at least one (inputs, targets) batch")
        return [t / count for t in total]

    def _forward_over_reverse(self, x: Tensor, y: Tensor, vs: list[Tensor]) -> list[Tensor]:
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]

        def loss_of(params, targets):
            return self.loss_fn(functional_call(self.model, dict(zip(names, params)), (x,)), targets)

        grad_fn = torch.func.grad(loss_of, argnums=0)
        # targets ride along as a primal with a materialized zero tangent: some loss backward
        # formulas (mse_loss in torch 2.14) fail under forward AD on the implicit ZeroTensor tangent
        if y.is_floating_point():
            primals, tangents = (tuple(p.detach() for p in self.params), y), (tuple(vs), torch.zeros_like(y))
            _, hv = torch.func.jvp(grad_fn, primals, tangents)
        else:
            _, hv = torch.func.jvp(lambda ps: grad_fn(ps, y), (tuple(p.detach() for p in self.params),),
                                   (tuple(vs),))
        return list(hv)

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` or ``Pᵀ H P v`` for a flat vector ``v`` (returned in ``v``'s dtype)."""
        self.matvecs += 1
        if self.scale is None:
            return torch.cat([h.reshape(-1) for h in self._hvp(self._unflatten(v))]).to(v.dtype)
        if isinstance(self.scale, Tensor):
            u = v * self.scale
            return torch.cat([h.reshape(-1) for h in self._hvp(self._unflatten(u))]).to(v.dtype) * self.scale
        u = self.scale.apply_P(v)
        hv = torch.cat([h.reshape(-1) for h in self._hvp(self._unflatten(u))]).to(v.dtype)
        return self.scale.apply_Pt(hv)

    def check_against_double_backward(self, seed: int = 1) -> None:
        """Refuse forward-over-reverse products that disagree with double backward on one vector.

        ``torch.func`` transforms have returned wrong second derivatives for some layers
        (train-mode BatchNorm under ``torch.func.hessian`` on torch 2.14); one extra product
        costs little next to a Lanczos run and catches such a regression.
        """
        if self.hvp_mode == "double_backward":
            return
        g = torch.Generator().manual_seed(seed)
        v = self._unflatten(torch.randn(self.n, generator=g, dtype=torch.float64).to(self.params[0].device))
        fwd = torch.cat([h.reshape(-1) for h in self._hvp(v)])
        self.hvp_mode = "double_backward"
        try:
            ref = torch.cat([h.reshape(-1) for h in self._hvp(v)])
        finally:
            self.hvp_mode = "forward_over_reverse"
        tol = 1e-8 if self.params[0].dtype == torch.float64 else 1e-3
        if float((fwd - ref).abs().max()) > tol * max(float(ref.abs().max()), 1e-30):
            raise RuntimeError("forward-over-reverse Hessian-vector products disagree with double backward "
                               "on this model; use hvp_mode='double_backward'")

    def check_determinism(self, seed: int = 0) -> None:
        """Apply the operator twice to one vector; different answers mean the batches or the model
        change between calls (e.g. train-mode BatchNorm over batches drawn anew, or dropout)."""
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(self.n, generator=g, dtype=torch.float64).to(self.params[0].device)
        a, b = self.matvec(v), self.matvec(v)
        scale = float(a.abs().max()) or 1.0
        tol = 1e-9 if self.params[0].dtype == torch.float64 else 1e-4
        if float((a - b).abs().max()) > tol * scale:
            raise RuntimeError(
                "the Hessian operator is not deterministic: two products with the same vector differ. "
                "Pass a fixed list of batches (not one drawn anew at each pass), and use bn_mode='eval' "
                "or a model without dropout"
            )


class LanczosRun:
    """One Lanczos process with full reorthogonalization, advanced one product at a time.

    :attr:`vector` is the next Lanczos vector ``q_j``; :meth:`advance` takes ``w = A q_j`` and returns
    True once the process has stopped. Convergence: both extreme Ritz pairs have residual
    ``|β_k s_{k,i}| ≤ tol·max(|θ_i|, tiny)``, or the Krylov space is invariant (``β_k ≈ 0``, exact),
    or ``max_matvecs`` products were taken. The start vector is a seeded Gaussian, so two runs with
    the same ``n`` and ``seed`` take the same steps on the same operator (a pack's members measured
    together, :mod:`precond.sweep.pack_curvature`, give what each gives alone).
    """

    def __init__(self, n: int, device, tol: float = 1e-3, max_matvecs: int = 200, seed: int = 0,
                 dtype=torch.float64):
        self.k_max, self.tol = min(max_matvecs, n), tol
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
        self.vector = q / q.norm()
        self.basis = torch.empty(self.k_max, n, device=device, dtype=dtype)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.beta_prev, self.q_prev = 0.0, None
        self.converged, self.done = False, self.k_max == 0
        self.theta = torch.zeros(1, dtype=torch.float64)

    def advance(self, w: Tensor) -> bool:
        """One Lanczos step with ``w = A q_j`` (``q_j`` = :attr:`vector`); True when the run has stopped."""
        j, q = len(self.alphas), self.vector
        self.basis[j] = q
        alpha = float(q @ w)
        w = w - alpha * q - (self.beta_prev * self.q_prev if self.q_prev is not None else 0.0)
        for _ in range(2):  # full reorthogonalization, twice is enough (Kahan–Parlett)
            w -= self.basis[:j + 1].T @ (self.basis[:j + 1] @ w)
        beta = float(w.norm())
        self.alphas.append(alpha)
        t = torch.diag(torch.tensor(self.alphas, dtype=torch.float64))
        if self.betas:
            off = torch.tensor(self.betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        self.theta, s = torch.linalg.eigh(t)
        scale = max(float(self.theta.abs().max()), 1e-300)
        invariant = beta <= 1e-12 * scale
        resid = (beta * s[-1, :]).abs()
        ends = [0, len(self.theta) - 1]
        if invariant or (j >= 1 and all(float(resid[i]) <= self.tol * max(abs(float(self.theta[i])), 1e-12 * scale)
                                        for i in ends)):
            self.converged = self.done = True
            return True
        self.betas.append(beta)
        self.q_prev, self.vector, self.beta_prev = q, w / beta, beta
        self.done = len(self.alphas) >= self.k_max
        return self.done

    def result(self) -> tuple[float, float, int, bool, Tensor]:
        """``(lam_max, lam_min, matvecs, converged, ritz_values)``."""
        return float(self.theta[-1]), float(self.theta[0]), len(self.alphas), self.converged, self.theta


def lanczos_extremes(matvec: Callable[[Tensor], Tensor], n: int, device, tol: float = 1e-3,
                     max_matvecs: int = 200, seed: int = 0, dtype=torch.float64):
    """Extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalization
    (:class:`LanczosRun`). Returns ``(lam_max, lam_min, matvecs, converged, ritz_values)``."""
    run = LanczosRun(n, device, tol=tol, max_matvecs=max_matvecs, seed=seed, dtype=dtype)
    while not run.done:
        run.advance(matvec(run.vector))
    return run.result()


#: relative asymmetry above which a dense Hessian is refused (float64 round-off is ~1e-15)
DENSE_SYMMETRY_TOL = 1e-8


def dense_hessian(model: nn.Module, loss_fn, batches: Iterable[Batch]) -> Tensor:
    """The full Hessian of the mean batch loss w.r.t. all trainable parameters, float64 (small models).

    Row ``i`` is ``∇ₚ[∇L(p)_i]`` by double backward on a float64 copy of the model (one
    backward of the gradient graph per row and batch); call it inside :func:`measurement_mode`.
    Raises when the result is not symmetric to ``DENSE_SYMMETRY_TOL`` (it cannot be trusted).
    """
    model64 = copy.deepcopy(model).double()
    params = [p for p in model64.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    h = torch.zeros(n, n, dtype=torch.float64, device=params[0].device)
    batches = list(batches)
    if not batches:
        raise ValueError("dense_hessian needs at least one (inputs, targets) batch")
    for x, y in batches:
        x = x.double() if x.is_floating_point() else x
        y = y.double() if y.is_floating_point() else y
        with torch.enable_grad():
            loss = loss_fn(model64(x), y)
            grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
            for i in range(n):
                row = torch.autograd.grad(grad[i], params, retain_graph=True, allow_unused=True)
                h[i] += torch.cat([torch.zeros(p.numel(), dtype=torch.float64, device=p.device) if r is None
                                   else r.reshape(-1) for p, r in zip(params, row)])
    h /= len(batches)
    asymmetry = float((h - h.T).abs().max())
    if asymmetry > DENSE_SYMMETRY_TOL * max(float(h.abs().max()), 1e-300):
        raise RuntimeError(f"the dense Hessian is not symmetric (max |H - Hᵀ| = {asymmetry:.3g}); "
                           "it cannot be trusted — use method='lanczos'")
    return (h + h.T) / 2
