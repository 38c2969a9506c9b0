"""A pack's Lanczos κ measured for every member at once: one stacked Hessian-vector product per step.

A pack minimizes the separable objective ``F(P) = Σ_j L_j(p_j)`` (:mod:`precond.sweep.pack_training`),
so its Hessian is block diagonal, ``∇²F = diag(H_1, …, H_J)``, and one product with the stacked
vector ``V = [v_1; …; v_J]`` gives every member's own product: ``∇²F V = [H_1 v_1; …; H_J v_J]``. Here
``L_j`` is member j's curvature loss, the mean over *its own* fixed batches (its
:class:`~precond.run.monitors.CurvatureMonitor`'s), and the product is the double backward
``∇_P[∇F(P)ᵀ stopgrad(V)]`` through the stacked model, the same batched kernels the pack trains with.
In ``z`` each block is ``P_j H_j P_j`` with member j's own diagonal ``P_j`` (``V ↦ P ∘ ∇²F (P ∘ V)``
with the stacked ``P``).

Each member then runs its own Lanczos (:class:`precond.hessian.LanczosRun`: the same seeded start
vector, tridiagonal, reorthogonalization and stopping test as alone) in lockstep with the others,
and stops at its own convergence; the product is taken while any member still runs. Each member's
κ is the one :func:`precond.curvature.measure_curvature` gives alone, up to the round-off of the
stacked kernels (``tests/test_pack_curvature.py``: 1e-10 in float64). Its ``seconds`` is its share of
the pack's measurement time.

Measured together: members whose monitors are due at this step with equal curvature settings, the
Lanczos method (the dense path stays per member), double-backward products, and in ``z`` a diagonal
``P``. Anything else is measured alone, as before.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch
from torch import Tensor

from precond.curvature import CurvatureResult, flat_P, kappa_of, lanczos_dtype, uses_dense
from precond.hessian import LanczosRun, measurement_mode
from precond.run.monitors import CurvatureMonitor
from precond.sweep.stacked_model import StackedModel, job_losses


class StackedHessian:
    """``V ↦ ∇²F V`` (or ``P ∘ ∇²F (P ∘ V)``) for the members' models, on ``[J, n]`` flat vectors.

    ``batches[j]`` is member j's list of ``(x, y)``; every member has as many batches, of equal
    shapes. Build it inside :func:`precond.hessian.measurement_mode` of every model (BatchNorm's mode
    explicit, running statistics left alone): the stacked model copies what the models hold then.
    """

    def __init__(self, models: list, task: str, batches: list[list[tuple[Tensor, Tensor]]],
                 scales: Tensor | None = None):
        self.stacked = StackedModel(models)
        self.task = task
        self.params = self.stacked.params
        self.shapes = [p.shape[1:] for p in self.params]
        self.n = sum(shape.numel() for shape in self.shapes)
        self.batches = [(torch.stack([b[i][0] for b in batches]), torch.stack([b[i][1] for b in batches]))
                        for i in range(len(batches[0]))]
        self.scales = scales
        self.matvecs = 0

    def _hvp(self, vs: list[Tensor]) -> list[Tensor]:
        total = [torch.zeros_like(p) for p in self.params]
        for x, y in self.batches:
            with torch.enable_grad():
                losses = job_losses(self.task, self.stacked.forward(x), y)  # [J]: each member's mean loss
                grads = torch.autograd.grad(losses.sum(), self.params, create_graph=True)
                hv = torch.autograd.grad(grads, self.params, grad_outputs=vs, allow_unused=True)
            for t, h in zip(total, hv):
                if h is not None:
                    t.add_(h.detach())
        return [t / len(self.batches) for t in total]

    def matvec(self, v: Tensor) -> Tensor:
        """``[H_j v_j]_j`` (``[P_j H_j P_j v_j]_j`` with scales) for ``v`` of shape ``[J, n]``."""
        self.matvecs += 1
        u = v * self.scales if self.scales is not None else v
        vs, start = [], 0
        for p, shape in zip(self.params, self.shapes):
            vs.append(u[:, start:start + shape.numel()].reshape(p.shape).to(p.dtype))
            start += shape.numel()
        hv = torch.cat([h.flatten(1) for h in self._hvp(vs)], dim=1).to(v.dtype)
        return hv * self.scales if self.scales is not None else hv

    def check_determinism(self, seed: int = 0) -> None:
        """:meth:`precond.hessian.HessianOperator.check_determinism` for every member at once."""
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(self.n, generator=g, dtype=torch.float64).to(self.params[0].device)
        v = v.expand(self.stacked.jobs, -1)
        a, b = self.matvec(v), self.matvec(v)
        tol = 1e-9 if self.params[0].dtype == torch.float64 else 1e-4
        scale = a.abs().amax(dim=1).clamp_min(1e-300)
        scale = torch.where(a.abs().amax(dim=1) > 0, scale, torch.ones_like(scale))
        if bool(((a - b).abs().amax(dim=1) > tol * scale).any()):
            raise RuntimeError("the Hessian operator is not deterministic: two products with the same vector "
                               "differ. Use bn_mode='eval' or a model without dropout")


def stacked_lanczos(op: StackedHessian, tol: float, max_matvecs: int, dtype) -> list[LanczosRun]:
    """One :class:`LanczosRun` per member, advanced together with one stacked product per step."""
    jobs = op.stacked.jobs
    runs = [LanczosRun(op.n, op.params[0].device, tol=tol, max_matvecs=max_matvecs, dtype=dtype)
            for _ in range(jobs)]
    while not all(run.done for run in runs):
        w = op.matvec(torch.stack([run.vector for run in runs]))
        for run, w_j in zip(runs, w):
            if not run.done:
                run.advance(w_j)
    return runs


def _measured_together(monitor: CurvatureMonitor, space: str) -> bool:
    s = monitor.settings
    n = sum(p.numel() for p in monitor.model.parameters() if p.requires_grad)
    if uses_dense(s.method, n) or s.hvp_mode != "double_backward":
        return False
    if space == "z":
        params = [p for p in monitor.model.parameters() if p.requires_grad]
        return monitor.optimizer.preconditioner_operator(params).diagonal() is not None
    return True


def measure_together(monitors: list[CurvatureMonitor], space: str, task: str) -> list[CurvatureResult]:
    """Lanczos κ in ``space`` of every monitor's model (one pack, equal settings), from stacked products."""
    t0 = time.perf_counter()
    s = monitors[0].settings
    models = [m.model for m in monitors]
    params = [[p for p in model.parameters() if p.requires_grad] for model in models]
    scales = None
    if space == "z":  # P = I (plain SGD) as ones: z is p there, and 1·v is v exactly
        flat = [flat_P(m.optimizer, ps) for m, ps in zip(monitors, params)]
        ones = torch.ones(sum(p.numel() for p in params[0]), dtype=params[0][0].dtype, device=params[0][0].device)
        scales = torch.stack([ones if f is None else f for f in flat])
    with contextlib.ExitStack() as modes:
        for model in models:
            modes.enter_context(measurement_mode(model, s.bn_mode))
        op = StackedHessian(models, task, [m.batches for m in monitors], scales)
        op.check_determinism()
        runs = stacked_lanczos(op, s.tol, s.max_matvecs, lanczos_dtype(op.n, s.max_matvecs, runs=len(models)))
    share = (time.perf_counter() - t0) / len(monitors)
    results = []
    for run in runs:
        lam_max, lam_min, steps, converged, ritz = run.result()
        kappa, flag = kappa_of(lam_max, lam_min)
        results.append(CurvatureResult(space=space, lam_max=lam_max, lam_min=lam_min, kappa=kappa, flag=flag,
                                       matvecs=steps + 2,  # + the determinism check's two, as alone
                                       converged=converged, seconds=share, method="lanczos", bn_mode=s.bn_mode,
                                       n_params=op.n, eigenvalues=ritz))
    return results


def prepare_pack_curvature(monitor_lists: list[tuple], step: int, final: bool, task: str) -> None:
    """Measure, for every space, the Lanczos κ of all due curvature monitors of a pack's members that can be
    measured together, and leave each result in its monitor's ``prepared`` (the monitor reports it)."""
    groups: dict[tuple, list[CurvatureMonitor]] = defaultdict(list)
    for monitors in monitor_lists:
        for monitor in monitors:
            if isinstance(monitor, CurvatureMonitor) and monitor.due(step, final):
                for space in monitor.spaces_now():
                    if _measured_together(monitor, space):
                        shapes = tuple((tuple(x.shape), tuple(y.shape)) for x, y in monitor.batches)
                        groups[(space, monitor.settings, shapes)].append(monitor)
    for (space, _, _), monitors in groups.items():
        if len(monitors) < 2:
            continue  # alone is the same work
        for monitor, result in zip(monitors, measure_together(monitors, space, task)):
            monitor.prepared[space] = result
