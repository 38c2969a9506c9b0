"""Measure Hessian conditioning: ``κ(H)`` in ``p`` and ``κ(PᵀHP)`` in ``z`` (DESIGN.md §1, §5).

The loss is the mean over a fixed list of batches,
``L(p) = (1/B) Σ_b loss_fn(model(x_b), y_b)``, so the operator is the same at
every call. Its Hessian ``H`` is applied to vectors by

* double backward: ``Hv = ∇ₚ[∇L(p)ᵀ stopgrad(v)]`` (default), or
* forward-over-reverse: ``Hv = JVP(∇L, p; v)`` (``torch.func``).

In the intrinsic variables ``z`` (``p = P z``, ``P = D^{-1/2}`` read from the live
optimizer's state at the step of measurement) the Hessian is ``PᵀHP``.
Extreme eigenvalues come from Lanczos with full reorthogonalization (float64
tridiagonal, Ritz residual ``|β_k s_{k,i}| ≤ tol·|θ_i|`` for convergence), or
— below ``dense_threshold`` parameters, or with ``method="dense"`` — from the
dense Hessian (``torch.func.hessian`` in float64) and ``eigvalsh``.

Non-convex Hessians have ``λmin < 0``: ``kappa`` is reported only when
``λmin > 0``; otherwise it is None and ``flag`` says why (never a clipped κ).

BatchNorm: ``bn_mode`` (``train``: batch statistics, the operator training
optimizes; ``eval``: running statistics) is explicit and recorded; running
statistics are snapshotted and restored, so measuring never changes the model.

Per-layer diagnostics: ``κ(ĤᵀĤ)`` of the extended hidden-variable matrix
``Ĥ = [h 1]`` of every Linear layer's input on a fixed batch, and the effective
``κ⁺ = λmax/λmin⁺`` over the non-null spectrum.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

Batch = tuple[Tensor, Tensor]
SPACES = ("p", "z")
METHODS = ("auto", "lanczos", "dense")
BN_MODES = ("train", "eval")
HVP_MODES = ("double_backward", "forward_over_reverse")


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

    def as_metrics(self, prefix: str = "curv") -> dict:
        p = f"{prefix}/{self.space}"
        return {f"{p}/lam_max": self.lam_max, f"{p}/lam_min": self.lam_min, f"{p}/kappa": self.kappa,
                f"{p}/matvecs": self.matvecs, f"{p}/converged": self.converged}

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "eigenvalues"}


def kappa_of(lam_max: float, lam_min: float) -> tuple[Optional[float], Optional[str]]:
    """``κ = λmax/λmin`` when ``λmin > 0``; else None and a flag (``indefinite`` or ``singular``)."""
    if lam_min > 0:
        return lam_max / lam_min, None
    return None, "indefinite" if lam_min < 0 else "singular"


@contextlib.contextmanager
def measurement_mode(model: nn.Module, bn_mode: str):
    """Put the model in ``bn_mode`` and restore its mode and all buffers afterwards.

    In ``train`` mode, BatchNorm layers drop their running statistics for the
    duration (they normalize with batch statistics, as in training, but update
    nothing), which also keeps ``torch.func`` transforms free of in-place updates.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {list(BN_MODES)}, got '{bn_mode}'")
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

    ``scale`` is the diagonal ``P`` as a flat vector (None: ``P = I``).
    Use it inside :func:`measurement_mode` (as :func:`measure_curvature` does) so that
    BatchNorm's mode is explicit and its running statistics are left alone.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batches: Iterable[Batch],
                 scale: Optional[Tensor] = None, hvp_mode: str = "double_backward"):
        if hvp_mode not in HVP_MODES:
            raise ValueError(f"hvp_mode must be one of {list(HVP_MODES)}, got '{hvp_mode}'")
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
        """``H v`` or ``P H P v`` for a flat vector ``v`` (returned in ``v``'s dtype)."""
        self.matvecs += 1
        u = v if self.scale is None else v * self.scale
        hv = torch.cat([h.reshape(-1) for h in self._hvp(self._unflatten(u))]).to(v.dtype)
        return hv if self.scale is None else hv * self.scale

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


def lanczos_extremes(matvec: Callable[[Tensor], Tensor], n: int, device, tol: float = 1e-3,
                     max_matvecs: int = 200, seed: int = 0, dtype=torch.float64):
    """Extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalization.

    Returns ``(lam_max, lam_min, matvecs, converged, ritz_values)``. Convergence:
    both extreme Ritz pairs have residual ``|β_k s_{k,i}| ≤ tol·max(|θ_i|, tiny)``, or the
    Krylov space is invariant (``β_k ≈ 0``, exact).
    """
    k_max = min(max_matvecs, n)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    q /= q.norm()
    basis = torch.empty(k_max, n, device=device, dtype=dtype)
    alphas, betas = [], []
    beta_prev, q_prev = 0.0, None
    converged, theta = False, torch.zeros(1, dtype=torch.float64)
    for j in range(k_max):
        basis[j] = q
        w = matvec(q)
        alpha = float(q @ w)
        w = w - alpha * q - (beta_prev * q_prev if q_prev is not None else 0.0)
        for _ in range(2):  # full reorthogonalization, twice is enough (Kahan–Parlett)
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        beta = float(w.norm())
        alphas.append(alpha)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = torch.linalg.eigh(t)
        scale = max(float(theta.abs().max()), 1e-300)
        invariant = beta <= 1e-12 * scale
        resid = (beta * s[-1, :]).abs()
        ends = [0, len(theta) - 1]
        if invariant or (j >= 1 and all(float(resid[i]) <= tol * max(abs(float(theta[i])), 1e-12 * scale)
                                        for i in ends)):
            converged = True
            break
        betas.append(beta)
        q_prev, q, beta_prev = q, w / beta, beta
    return float(theta[-1]), float(theta[0]), len(alphas), converged, theta


def _flat_scale(optimizer, params: Sequence[Tensor]) -> Optional[Tensor]:
    """``P = D^{-1/2}`` as a flat vector over ``params`` from the optimizer's current state."""
    denominators = dict((id(p), d) for p, d in optimizer.preconditioner_denominators())
    if all(denominators.get(id(p)) is None for p in params):
        return None
    parts = []
    for p in params:
        d = denominators.get(id(p))
        parts.append(torch.ones(p.numel(), device=p.device, dtype=torch.float64) if d is None
                     else d.detach().reshape(-1).double().rsqrt())
    return torch.cat(parts)


def dense_hessian(model: nn.Module, loss_fn, batches: Iterable[Batch]) -> Tensor:
    """The full Hessian of the mean batch loss w.r.t. all trainable parameters, float64 (small models)."""
    model64 = copy.deepcopy(model).double()
    names = [n for n, p in model64.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model64.named_parameters() if p.requires_grad]
    sizes = [s.numel() for s in shapes]
    buffers = dict(model64.named_buffers())
    batches = [(x.double() if x.is_floating_point() else x, y.double() if y.is_floating_point() else y)
               for x, y in batches]

    def loss_of(theta):
        parts = torch.split(theta, sizes)
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return sum(loss_fn(functional_call(model64, {**params, **buffers}, (x,)), y) for x, y in batches) \
            / len(batches)

    theta = torch.cat([p.detach().reshape(-1) for n, p in model64.named_parameters() if p.requires_grad])
    h = torch.func.hessian(loss_of)(theta)
    return (h + h.T) / 2


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
    if space not in SPACES:
        raise ValueError(f"space must be one of {list(SPACES)}, got '{space}'")
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got '{method}'")
    if space == "z" and (optimizer is None or not hasattr(optimizer, "preconditioner_denominators")):
        raise ValueError("space='z' needs the precond optimizer whose preconditioner P defines z = P⁻¹p")
    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    scale = _flat_scale(optimizer, params) if space == "z" else None
    use_dense = method == "dense" or (method == "auto" and n <= dense_threshold)
    with measurement_mode(model, bn_mode):
        if use_dense:
            h = dense_hessian(model, loss_fn, batches)
            if scale is not None:
                s = scale.to(h.device)
                h = s[:, None] * h * s[None, :]
            eig = torch.linalg.eigvalsh(h)
            lam_max, lam_min, matvecs, converged = float(eig[-1]), float(eig[0]), n, True
            ritz = eig.cpu()
        else:
            op = HessianOperator(model, loss_fn, batches, scale=scale, hvp_mode=hvp_mode)
            if check_determinism:
                op.check_determinism()
            big = n * min(max_matvecs, n) * 8 > 2 * 1024**3  # keep the Krylov basis under ~2 GiB
            lam_max, lam_min, matvecs, converged, ritz = lanczos_extremes(
                op.matvec, n, params[0].device, tol=tol, max_matvecs=max_matvecs,
                dtype=torch.float32 if big else torch.float64)
            matvecs = op.matvecs
    kappa, flag = kappa_of(lam_max, lam_min)
    return CurvatureResult(space=space, lam_max=lam_max, lam_min=lam_min, kappa=kappa, flag=flag,
                           matvecs=matvecs, converged=converged, seconds=time.perf_counter() - t0,
                           method="dense" if use_dense else "lanczos", bn_mode=bn_mode, n_params=n,
                           eigenvalues=ritz)


def hidden_matrix_kappas(model: nn.Module, inputs: Tensor, rel_tol: float = 1e-10,
                         max_features: int = 4096, bn_mode: str = "train") -> dict[str, dict]:
    """``κ(ĤᵀĤ)`` and ``κ⁺`` of ``Ĥ = [h 1]`` for the input ``h`` of every Linear layer.

    ``h`` is flattened to ``N × d``; eigenvalues of ``ĤᵀĤ/N`` in float64. ``κ⁺`` uses the
    smallest eigenvalue above ``rel_tol·λmax`` (a null vector, e.g. ``[1; 0]`` when the rows
    of ``h`` are centred, is left out). Layers wider than ``max_features`` are skipped.
    """
    captured: dict[str, Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.in_features <= max_features:
            hooks.append(module.register_forward_hook(
                lambda m, args, out, name=name: captured.__setitem__(name, args[0].detach())))
    try:
        with torch.no_grad(), measurement_mode(model, bn_mode):
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, h in captured.items():
        h = h.reshape(h.shape[0], -1).double()
        ext = torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)], dim=1)
        eig = torch.linalg.eigvalsh(ext.T @ ext / h.shape[0])
        lam_max = float(eig[-1])
        positive = eig[eig > rel_tol * lam_max]
        kappa = lam_max / float(eig[0]) if float(eig[0]) > rel_tol * lam_max else None
        out[name] = {"kappa_hidden": kappa, "kappa_hidden_plus": lam_max / float(positive[0])}
    return out


@dataclass
class CurvatureSettings:
    """When and how to measure during training (the ``hessian`` config group)."""

    method: str = "lanczos"
    every: int = 500
    batches: int = 4
    batch_size: Optional[int] = None
    spaces: tuple[str, ...] = ("p", "z")
    tol: float = 1e-3
    max_matvecs: int = 100
    bn_mode: str = "train"
    hvp_mode: str = "double_backward"
    layers: bool = True


#: samples of the fixed training subset on which the per-layer κ(ĤᵀĤ) is computed
LAYER_SAMPLES = 1024


class CurvatureMonitor:
    """A training monitor: every ``settings.every`` steps, κ in each space and per-layer κ(ĤᵀĤ).

    The batches are fixed once (the first ``batches × batch_size`` samples of a
    seeded permutation of the training split), so measurements at different
    steps see the same operator up to the change in parameters. Per-layer
    ``κ(ĤᵀĤ)`` uses a fixed subset of up to ``LAYER_SAMPLES`` training inputs. Logs
    ``curv/<space>/{lam_max, lam_min, kappa, matvecs, converged}``,
    ``curv/layer/<name>/kappa_hidden[_plus]`` and the cumulative ``time/curv_s``.
    ``z`` is skipped until the optimizer has state (``P`` undefined before step 1).
    """

    def __init__(self, model: nn.Module, loss_fn, x_train: Tensor, y_train: Tensor, optimizer,
                 settings: CurvatureSettings, default_batch_size: int, seed: int = 0):
        self.model, self.loss_fn, self.optimizer, self.settings = model, loss_fn, optimizer, settings
        size = settings.batch_size or default_batch_size
        n = min(x_train.shape[0], size * settings.batches)
        perm = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        perm = perm.to(x_train.device)
        xs, ys = x_train[perm], y_train[perm]
        self.batches = [(xs[i:i + size], ys[i:i + size]) for i in range(0, n, size)]
        # κ(ĤᵀĤ) needs more samples than features, whatever the training batch size
        diag = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(seed))
        self.layer_inputs = x_train[diag[:min(x_train.shape[0], LAYER_SAMPLES)].to(x_train.device)]
        self.seconds = 0.0

    def __call__(self, step: int) -> dict:
        if step % self.settings.every != 0:
            return {}
        t0 = time.perf_counter()
        metrics: dict = {}
        s = self.settings
        for space in s.spaces:
            if space == "z" and not self.optimizer.state:
                continue
            res = measure_curvature(self.model, self.loss_fn, self.batches, optimizer=self.optimizer, space=space,
                                    tol=s.tol, max_matvecs=s.max_matvecs, method=s.method, bn_mode=s.bn_mode,
                                    hvp_mode=s.hvp_mode)
            metrics.update(res.as_metrics())
        if s.layers:
            for name, values in hidden_matrix_kappas(self.model, self.layer_inputs, bn_mode=s.bn_mode).items():
                for key, value in values.items():
                    metrics[f"curv/layer/{name}/{key}"] = value
        self.seconds += time.perf_counter() - t0
        metrics["time/curv_s"] = self.seconds
        return metrics
