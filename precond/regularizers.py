"""Regularization in the chosen variable, ``p`` or ``z = P⁻¹ p`` (docs/theory.md §3).

Let ``g`` be the gradient, ``M = P Pᵀ = D⁻¹`` the preconditioner at this step,
``d`` the preconditioned direction (``M g``, or ``M m̂`` for Adam), ``η`` the
learning rate and ``λ`` the strength (``group["strength"]``). A penalty on
``p`` adds its gradient *before* the preconditioner, so it enters the moments
(Adam's ``m, v``, AdaGrad's sum, RMSProp's average) and SGD's momentum buffer.
A penalty on ``z`` is differentiated in ``z`` and mapped back through ``P``:
its term is added *after* the preconditioner and *before* heavy-ball momentum
(so SGD/RMSProp momentum carries it, Adam's moments never see it). Proximal
maps act on the parameters after the whole update, outside any momentum.

===============  ================================  ==================================
penalty          variable ``p``                    variable ``z``
===============  ================================  ==================================
L2 ``λ/2‖·‖²``    ``p ← p − ηM(g + λp)``             ``p ← p − η(Mg + λp)`` (AdamW)
L1 subgradient   ``p ← p − ηM(g + λ sign p)``        ``p ← p − η(Mg + λ P sign p)``
L1 prox          ``p ← S(u, ηλM)``                   ``p ← S(u, ηλP)``
gradnorm         ``p ← p − ηM(g + λHg)``             ``p ← p − ηM(g + λHMg)``
===============  ================================  ==================================

``u = p − η d`` is the unregularized update, ``S(x, t) = sign(x) max(|x| − t, 0)``.
The z rows are literal steps on ``z = P⁻¹p`` mapped back: e.g. L1-prox in z is
``P·S(P⁻¹u, ηλ) = S(u, ηλP)``; the z-gradnorm penalty is ``½ gᵀMg`` with ``M``
held fixed, whose ``z``-gradient ``PᵀHMg`` maps back to ``MHMg``.

Strength follows torch: the L2 decay per step is ``ηλ``. Which tensors are
penalized is the *policy*: ``all`` or ``weights`` (tensors with ``ndim ≥ 2``).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from precond.chain import Link, StepContext, add_scaled, add_scaled_, hmap, is_zero, pick
from precond.errors import ConfigError
from precond.settings import Choice, Num, Settings, setting

POLICIES = ("all", "weights")
VARIABLES = ("p", "z")
L1_FORMS = ("subgradient", "prox")
HVP_BACKENDS = ("double_backward", "finite_difference")


def regularized_indices(ctx: StepContext) -> list[int]:
    """Indices of ``ctx.params`` the group's policy penalizes (and only when λ > 0)."""
    if is_zero(ctx.hyper("strength")):
        return []
    if ctx.group["policy"] == "weights":
        job_axis = 1 if ctx.group.get("stacked") else 0  # packed parameters carry a leading job axis
        return [i for i, p in enumerate(ctx.params) if p.ndim - job_axis >= 2]
    return list(range(len(ctx.params)))


def _add_scaled(ctx: StepContext, d: list[Tensor], idx: list[int], terms: list[Tensor], name: str) -> list[Tensor]:
    """``d[i] += h · terms[j]`` for ``i = idx[j]`` with ``h`` the group's hyperparameter ``name``,
    never writing into a gradient in place."""
    out = list(d)
    alpha = pick(ctx.hyper(name), idx)  # one entry per term
    owned = [j for j, i in enumerate(idx) if d[i] is not ctx.grads[i]]
    shared = [j for j, i in enumerate(idx) if d[i] is ctx.grads[i]]
    if owned:
        add_scaled_([d[idx[j]] for j in owned], [terms[j] for j in owned], pick(alpha, owned))
    if shared:
        new = add_scaled([d[idx[j]] for j in shared], [terms[j] for j in shared], pick(alpha, shared))
        for j, t in zip(shared, new):
            out[idx[j]] = t
    return out


class Penalty(Link):
    """A penalty placed before (``variable="p"``) or after (``"z"``) the preconditioner."""

    def __init__(self, variable: str):
        self.variable = variable

    def value(self, groups: list[tuple[float, list[Tensor]]], state: Optional[dict] = None) -> Optional[float]:
        """The penalty on ``p`` summed over ``(strength λ, penalized tensors)`` groups (for logging),
        or None when it has no closed form here; ``state``: the optimizer's state."""
        return None

    def share_totals(self, state: Optional[dict] = None) -> Optional[tuple[float, int]]:
        """The penalty term's share of the step's direction on the penalized tensors,
        ``‖λ·term‖ / ‖direction without it‖``, summed over every step so far, and the number of steps
        (for calibrating λ: :class:`precond.run.monitors.RegularizationMonitor` averages it between
        evaluations), or None when not tracked."""
        return None


class L2(Penalty):
    """``λ/2 ‖·‖²``; both variables add ``λ p`` to the direction.

    Before the preconditioner (p) the term is preconditioned: ``p ← p − ηM(g + λp)``.
    After it (z) it is decoupled decay: ``∇_z λ/2‖z‖² = λz`` maps back to ``Pλz = λp``.
    """

    namespace = "l2"

    def transform(self, ctxs, directions):
        out = []
        for ctx, d in zip(ctxs, directions):
            idx = regularized_indices(ctx)
            out.append(_add_scaled(ctx, d, idx, [ctx.params[i] for i in idx], "strength") if idx else d)
        return out

    def value(self, groups, state=None):
        return sum(0.5 * strength * sum(float(p.detach().pow(2).sum()) for p in params) for strength, params in groups)


class L1Subgradient(Penalty):
    """``λ‖·‖₁`` by subgradient: adds ``λ sign p`` (p) or ``λ P sign p`` (z). No exact zeros.

    In z: ``∇_z λ‖z‖₁ = λ sign z = λ sign p`` (``P`` is positive diagonal), mapped back by ``P``.
    """

    namespace = "l1"

    @property
    def needs_precond(self) -> bool:
        return self.variable == "z"

    def transform(self, ctxs, directions):
        out = []
        for ctx, d in zip(ctxs, directions):
            idx = regularized_indices(ctx)
            if not idx:
                out.append(d)
                continue
            signs = torch._foreach_sign([ctx.params[i] for i in idx])
            if self.variable == "z" and ctx.denominator is not None:
                torch._foreach_mul_(signs, ctx.P(idx))
            out.append(_add_scaled(ctx, d, idx, signs, "strength"))
        return out

    def value(self, groups, state=None):
        return sum(strength * sum(float(p.detach().abs().sum()) for p in params) for strength, params in groups)


class L1Prox(Penalty):
    """``λ‖·‖₁`` by its proximal map after the update: ``p ← S(u, ηλM)`` (p) or ``S(u, ηλP)`` (z).

    Produces exact zeros. With ``P = I`` both are ``S(u, ηλ)``.
    """

    namespace = "l1"
    needs_precond = True

    def after_update(self, ctxs):
        for ctx in ctxs:
            idx = regularized_indices(ctx)
            if not idx:
                continue
            params = [ctx.params[i] for i in idx]
            scale = pick(hmap(lambda lr, s: lr * s, ctx.lr, ctx.hyper("strength")), idx)  # ηλ
            if ctx.denominator is None:
                soft_threshold_(params, scale)
            else:
                thresholds = ctx.M(idx) if self.variable == "p" else ctx.P(idx)
                torch._foreach_mul_(thresholds, scale)
                soft_threshold_(params, thresholds)

    def value(self, groups, state=None):
        return sum(strength * sum(float(p.detach().abs().sum()) for p in params) for strength, params in groups)


def soft_threshold_(xs: list[Tensor], t) -> None:
    """In place ``x ← sign(x)·max(|x| − t, 0)`` element-wise over a list of tensors (exact zeros in ``[−t, t]``).

    ``t`` is one scalar or a list of per-coordinate thresholds shaped like ``xs``.
    """
    shrunk = torch._foreach_abs(xs)
    torch._foreach_sub_(shrunk, t)
    torch._foreach_clamp_min_(shrunk, 0.0)
    torch._foreach_mul_(shrunk, torch._foreach_sign(xs))
    torch._foreach_copy_(xs, shrunk)


class BackwardCreatesGraph(TorchFunctionMode):
    """Inside this mode, ``loss.backward(...)`` runs as ``loss.backward(..., create_graph=True)``.

    The contract of the double-backward gradnorm backend: the step's closure computes the
    gradients with ``Tensor.backward`` (the standard closure). The optimizer enters this
    mode only around its own call of the closure, so the change is scoped to that call and
    to the current thread — nothing outside the step sees it (a ``TorchFunctionMode`` is a
    context on torch's per-thread mode stack, not a patch of ``torch.Tensor``).
    ``torch.autograd.backward``/``grad`` are left alone; the optimizer checks afterwards
    that the gradients carry a graph and says how to fix the closure when they do not.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.backward:
            kwargs["create_graph"] = True
            with warnings.catch_warnings():
                # the optimizer replaces p.grad by a detached copy right after, which breaks the cycle
                warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
                return func(*args, **kwargs)
        return func(*args, **kwargs)


#: the default cap on ``M`` in the z gradient-norm penalty (``P ≤ 100``): Adam's ``M = 1/(√v̂ + ε)`` reaches
#: ``1/ε = 1e8`` where a coordinate's gradients vanish, and the penalty's step ``λ M H (M g)`` carries ``M``
#: twice, so without a cap one quiet coordinate makes the step explode at any useful ``λ``
DEFAULT_MAX_M = 1.0e4


class GradNorm(Penalty):
    """Gradient-norm penalty: ``½‖∇f‖²`` (p) or ``½ gᵀM̃g`` with ``M̃`` fixed (z).

    p: ``g ← g + λ H g`` before the preconditioner (enters the moments).
    z: ``d ← d + λ M̃ H (M̃ g)`` after it, ``M̃ = min(M, max_m)`` elementwise from this step's
    preconditioner (``max_m`` default :data:`DEFAULT_MAX_M`), ``g`` the raw minibatch gradient
    (not Adam's ``m̂``). The cap bounds the penalty's step by ``λ max_m² ‖H‖ ‖g‖`` whatever the
    optimizer's ``ε``; on coordinates where ``M ≤ max_m`` the penalty is exactly ``½ gᵀMg``.
    :meth:`share_totals` reports the running sum of ``‖λ·term‖ / ‖direction‖`` and its step count (the
    regularization monitor averages it over each evaluation interval), to calibrate ``λ``.

    Hessian-vector products on the same minibatch, by

    * ``double_backward``: the step's closure runs once with
      ``create_graph=True`` and ``Hv = ∇ₚ[gᵀ stopgrad(v)]`` (no extra forward);
    * ``finite_difference``: ``λHv ≈ (λ/r)(∇f(p + r v) − ∇f(p))``, one extra
      closure call at the perturbed point, ``r = λ`` (of the first penalized
      group) unless set, so that in the
      p variable ``g + λHg ≈ ∇f(p + λg)`` (SAM-like). The error is ``O(r)``.
      The parameters are restored by copy (bit-exact), ``p.grad`` is restored
      to the unperturbed gradient, and the tensors in ``buffers`` (give
      ``model.buffers()``: BatchNorm running mean/var and batch counters) are
      snapshotted before and restored after the extra pass, so running
      statistics only ever see the unperturbed forward.
    """

    namespace = "gradnorm"
    needs_closure = True

    def __init__(self, variable: str, backend: str, r: Optional[float] = None,
                 buffers: Iterable[Tensor] = (), max_m: Optional[float] = None):
        super().__init__(variable)
        self.backend = backend
        self.r = r
        self.max_m = DEFAULT_MAX_M if max_m is None else float(max_m)
        self.buffers = list(buffers)
        self.needs_graph = backend == "double_backward"
        # the last step's penalty, and Σ over steps of ‖λ·term‖/‖direction‖ since the last read with their count,
        # live in the optimizer state of the first penalized tensor (checkpointed with it, and one entry per job
        # in a pack, so that each job's own optimizer reads its own): :meth:`_entry` finds it

    def for_pack(self, layout) -> Link:
        """The same penalty over a pack's stacked parameters; the extra forward's side effects on buffers
        (BatchNorm's running statistics) are undone on the pack's stacked buffers."""
        return GradNorm(self.variable, self.backend, self.r, layout.buffers, self.max_m)

    @property
    def needs_precond(self) -> bool:
        return self.variable == "z"

    def _entry(self, state: Optional[dict]) -> Optional[dict]:
        """The optimizer-state entry that holds the penalty's own records (None before the first step)."""
        if not state:
            return None
        return next((entry for entry in state.values() if self.key("share_steps") in entry), None)

    def transform(self, ctxs, directions):
        selected = [regularized_indices(ctx) for ctx in ctxs]
        if not any(selected):
            return directions
        stacked = bool(ctxs[0].group.get("stacked"))  # a pack: every sum below is one per job
        # per group: M on the penalized params (z only), v = g (p) or M g (z)
        ms = [ctx.M(idx) if self.variable == "z" and idx else None for ctx, idx in zip(ctxs, selected)]
        ms = [None if m is None else torch._foreach_clamp_max(m, self.max_m) for m in ms]
        grads = [[ctx.grads[i] for i in idx] for ctx, idx in zip(ctxs, selected)]
        vs = [g if m is None else torch._foreach_mul(g, m) for g, m in zip(grads, ms)]
        penalty = sum(0.5 * ctx.group["strength"] * torch.stack([_sum(a * b, stacked) for a, b in zip(g, v)]).sum(0)
                      for ctx, g, v in zip(ctxs, grads, vs) if g)
        params = [ctx.params[i] for ctx, idx in zip(ctxs, selected) for i in idx]
        hv = self.hvp(ctxs, params, [t for g in grads for t in g], [t for v in vs for t in v])
        out, start = [list(d) for d in directions], 0
        term_sq, direction_sq = [], []
        for c, (ctx, idx, m) in enumerate(zip(ctxs, selected, ms)):
            terms, start = hv[start:start + len(idx)], start + len(idx)
            if not idx:
                continue
            if m is not None:
                torch._foreach_mul_(terms, m)  # z: M H (M g)
            term_sq.append(ctx.group["strength"] ** 2 * _sum_sq(terms, stacked))
            direction_sq.append(_sum_sq([out[c][i] for i in idx], stacked))
            out[c] = _add_scaled(ctx, out[c], idx, terms, "strength")
        ratio = (sum(term_sq) / sum(direction_sq).clamp_min(1e-300)).sqrt()  # on the device: no sync per step
        c = next(c for c, idx in enumerate(selected) if idx)
        anchor = ctxs[c].params[selected[c][0]]
        state = ctxs[c].states[selected[c][0]]
        # kept in the tensor's dtype: torch's load_state_dict casts float state to it, and a resumed run must match
        state[self.key("penalty")] = torch.as_tensor(penalty).to(anchor.dtype)
        state[self.key("share_sum")] = state.get(self.key("share_sum"), 0.0) + ratio.to(anchor.dtype)
        state[self.key("share_steps")] = state.get(self.key("share_steps"), 0) + 1
        return out

    def share_totals(self, state: Optional[dict] = None) -> Optional[tuple[float, int]]:
        """``(Σ ‖λ·term‖ / ‖direction without it‖, steps)`` over every step so far (a reader keeps its
        last pair and takes differences: the state is never reset, so a pack's copy of it stays exact)."""
        entry = self._entry(state)
        if entry is None:
            return None
        return float(entry[self.key("share_sum")]), int(entry[self.key("share_steps")])

    def value(self, groups, state=None):
        """The penalty at the last step: ``λ ½‖g‖²`` (p) or ``λ ½ gᵀMg`` (z)."""
        entry = self._entry(state)
        return None if entry is None or self.key("penalty") not in entry else float(entry[self.key("penalty")])

    def hvp(self, ctxs, params, grads, v) -> list[Tensor]:
        """``H v`` for the listed parameters (rows and columns restricted to them), by the backend."""
        if self.backend == "double_backward":
            graph_grads = [ctxs[0].graph_grads[p] for p in params]
            with torch.enable_grad():
                hv = torch.autograd.grad(graph_grads, params, grad_outputs=v, allow_unused=True)
            return [torch.zeros_like(p) if h is None else h for p, h in zip(params, hv)]
        return self._finite_difference(ctxs, params, grads, v, self._radius(ctxs))

    def _radius(self, ctxs):
        """``r``: the setting, else λ of the first penalized group; in a pack one per job (λ where it is
        positive, 1 where it is 0: that job's term is multiplied by λ = 0 anyway)."""
        if self.r is not None:
            return self.r
        strengths = [ctx.group["strength"] for ctx in ctxs]
        stacked = next((s for s in strengths if isinstance(s, Tensor)), None)
        if stacked is not None:
            return torch.where(stacked > 0, stacked, torch.ones_like(stacked))
        return next(s for s in strengths if s > 0)

    def _finite_difference(self, ctxs, params, grads, v, r) -> list[Tensor]:
        """``Hv ≈ (∇f(p + r v) − ∇f(p)) / r`` with one extra closure call; everything restored after.
        ``r``: a number, or one per job (a pack: ``[J]``, against the parameters' leading job axis)."""
        all_params = [p for ctx in ctxs for p in ctx.params]
        saved_grads = [p.grad for p in all_params]
        saved_params = [p.detach().clone() for p in params]
        saved_buffers = [b.detach().clone() for b in self.buffers]
        per_job = [r.view(-1, *[1] * (p.ndim - 1)) for p in params] if isinstance(r, Tensor) else None
        try:
            if per_job is None:
                torch._foreach_add_(params, v, alpha=r)
            else:
                torch._foreach_add_(params, torch._foreach_mul(v, per_job))
            with torch.enable_grad():
                ctxs[0].closure()
            perturbed = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
        finally:
            torch._foreach_copy_(params, saved_params)
            for b, saved in zip(self.buffers, saved_buffers):
                b.copy_(saved)
            for p, g in zip(all_params, saved_grads):
                p.grad = g
        diff = torch._foreach_sub(perturbed, grads)
        if per_job is None:
            torch._foreach_div_(diff, r)
        else:
            torch._foreach_div_(diff, per_job)
        return diff


#: penalty names make_penalty knows (L1 picks its link by form, gradnorm takes a backend)
REGULARIZERS = ("l2", "l1", "gradnorm")


def _sum(t: Tensor, stacked: bool) -> Tensor:
    """The sum of a tensor's entries; in a pack (``stacked``) one sum per job (over all but the first axis)."""
    return t.flatten(1).sum(dim=1) if stacked else t.sum()


def _sum_sq(tensors: list[Tensor], stacked: bool = False) -> Tensor:
    return torch.stack([_sum(t.double() ** 2, stacked) for t in tensors]).sum(dim=0)


def make_penalty(name: str, variable: str, form: Optional[str] = None, backend: Optional[str] = None,
                 r: Optional[float] = None, buffers: Iterable[Tensor] = (), max_m: Optional[float] = None) -> Penalty:
    """The link for ``name`` in ``variable``; ``form`` is for L1, ``backend``/``r`` for gradnorm.

    The arguments are checked by building their :class:`RegularizationSpec` (the one owner of the rules).
    """
    spec = RegularizationSpec(name=name, variable=variable, form=form, backend=backend, r=r, max_m=max_m)
    if spec.name == "none":
        raise ConfigError("name", f"one of {list(REGULARIZERS)} (make_penalty builds a penalty)", name)
    if spec.name == "l2":
        return L2(spec.variable)
    if spec.name == "l1":
        return (L1Prox if (spec.form or "prox") == "prox" else L1Subgradient)(spec.variable)
    return GradNorm(spec.variable, spec.backend or "finite_difference", spec.r, buffers, spec.max_m)


@dataclass(frozen=True)
class RegularizationSpec(Settings):
    """The ``regularization`` config group: which penalty, in which variable, how strong.

    ``name`` is ``none | l2 | l1 | gradnorm``; ``form`` is for l1 (default prox), ``backend``/``r``
    for gradnorm (default finite_difference, r = λ); each is null elsewhere. ``strength`` is λ in
    torch's convention (the L2 decay per step is ηλ).
    """

    name: str = setting(Choice(("none", *REGULARIZERS)), "none")
    variable: str = setting(Choice(VARIABLES), "p",
                            fix="p penalizes the model parameters, z the intrinsic ones (p = P z)")
    strength: float = setting(Num(0), 0.0, doc="λ")
    policy: str = setting(Choice(POLICIES), "all", fix="weights: only tensors with ndim >= 2")
    form: Optional[str] = setting(Choice(L1_FORMS, optional=True), None,
                                  fix="prox gives exact zeros, subgradient does not")
    backend: Optional[str] = setting(Choice(HVP_BACKENDS, optional=True), None)
    r: Optional[float] = setting(Num(0, lo_open=True, optional=True), None, doc="finite-difference step; null = λ")
    max_m: Optional[float] = setting(Num(0, lo_open=True, optional=True), None,
                                     doc="gradnorm in z: cap on M in the penalty; null = DEFAULT_MAX_M")

    def check(self) -> None:
        if self.form is not None and self.name != "l1":
            raise ConfigError("form", f"null with regularization {self.name} (form is an l1 setting)", self.form)
        for key in ("backend", "r", "max_m"):
            if getattr(self, key) is not None and self.name != "gradnorm":
                raise ConfigError(key, f"null with regularization {self.name} (a gradnorm setting)", getattr(self, key))

    def optimizer_kwargs(self) -> dict:
        """The keyword arguments of :func:`precond.build_optimizer` for this penalty."""
        if self.name == "none":
            return {"regularization": "none"}
        kwargs = {"regularization": self.name, "variable": self.variable, "strength": self.strength,
                  "policy": self.policy}
        kwargs.update({k: v for k, v in (("form", self.form), ("backend", self.backend), ("r", self.r),
                                         ("max_m", self.max_m)) if v is not None})
        return kwargs
