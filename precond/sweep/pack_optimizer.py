"""The optimizer of a pack: every job's own chain over its slice of the stacked parameters.

A pack stacks J jobs' parameters along a leading job axis, ``P = [p_1; …; p_J]``. The
objective is separable, ``F(P) = Σ_j f_j(p_j)``, so one backward pass gives every job's own
gradient ``∂F/∂p_j = ∇f_j(p_j)``, and each job's update needs only its own slice of ``P``
and of that gradient. Jobs may therefore differ in their whole optimizer chain — the
preconditioner (SGD, AdaGrad, RMSProp, Adam), the regularizer and its variable p|z — and
still share one forward and backward.

Jobs whose chains are equal (:func:`chain_signature`) form a *segment*: a contiguous block
``[a, b)`` of the job axis, stepped by one :class:`~precond.optim.ComposedOptimizer` over
the views ``P[a:b]`` with each hyperparameter that differs between its jobs held as a
per-job tensor (:func:`stack_optimizer`). Every link is element-wise, so each job's slice
follows exactly the update its own optimizer would take alone.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from precond.chain import PackLayout
from precond.optim import ComposedOptimizer
from precond.settings import is_number

_SCALARS = (str, bool, int, float, type(None))


def chain_signature(optimizer: ComposedOptimizer) -> str:
    """What two jobs' optimizers must share to be stepped as one: the links in their slots
    (p-regularizers, preconditioner, z-regularizers, momentum, prox) with their own settings,
    the param-group keys, the values that cannot be stacked (flags, names), and whether
    momentum is on (0 and > 0 take different code paths: no buffer, or a buffer)."""
    preconditioner, before, after, momentum, post = optimizer.chain

    def link(item) -> tuple:
        settings = sorted((k, v) for k, v in vars(item).items() if isinstance(v, _SCALARS))
        return type(item).__name__, settings

    group = optimizer.param_groups[0]
    fixed = sorted((k, v) for k, v in group.items()
                   if k != "params" and (isinstance(v, (str, bool)) or v is None))
    slots = ([link(preconditioner)], [link(x) for x in before], [link(x) for x in after],
             [link(momentum)] if momentum is not None else [], [link(x) for x in post])
    return repr((slots, sorted(k for k in group if k != "params"), fixed, bool(group.get("momentum"))))


def _per_job(values: list, device, dtype):
    """One hyperparameter over the jobs: the common number, or a per-job tensor where they differ."""
    if all(v == values[0] for v in values):
        return values[0]
    if not all(is_number(v) for v in values):
        raise ValueError(f"jobs differ in a setting that cannot be stacked: {values}")
    host = torch.tensor(values, dtype=dtype, pin_memory=torch.device(device).type == "cuda")
    return host.to(device, non_blocking=True)  # no wait for the device's queue


class _LearningRates:
    """A segment's per-job ``lr`` before each step: each job's own (scheduled) lr, 0 once it has
    diverged. The tensor is rebuilt only when a value changes (a constant schedule copies nothing)."""

    def __init__(self, device, dtype):
        self.device, self.dtype, self.values, self.value = device, dtype, None, None

    def __call__(self, values: list):
        if values != self.values:
            self.values, self.value = values, _per_job(values, self.device, self.dtype)
        return self.value


def stack_optimizer(optimizers: list[ComposedOptimizer], params: list[Tensor], layout=None) -> ComposedOptimizer:
    """Jobs' optimizers with one chain as one over the stacked ``params``: the first job's chain,
    every hyperparameter per job (a tensor where they differ), the jobs' states stacked."""
    groups = [opt.param_groups for opt in optimizers]
    if any(len(g) != 1 for g in groups):
        raise ValueError("packed training needs one param group per job")
    first = groups[0][0]
    device, dtype = params[0].device, params[0].dtype
    defaults = {}
    for key in first:
        if key == "params":
            continue
        values = [g[0][key] for g in groups]
        if isinstance(first[key], tuple):  # betas: each entry on its own
            defaults[key] = tuple(_per_job([v[i] for v in values], device, dtype) for i in range(len(first[key])))
        else:
            defaults[key] = _per_job(values, device, dtype)
    defaults["stacked"] = True  # the links' view of a parameter's own shape drops the leading job axis
    packed = optimizers[0].with_chain_over(params, defaults, layout)
    solo_params = [g[0]["params"] for g in groups]
    for i, p in enumerate(params):
        states = [opt.state.get(ps[i], {}) for opt, ps in zip(optimizers, solo_params)]  # .get: state is a
        # defaultdict, and an empty entry would make a fresh optimizer look stepped
        if not states[0]:
            continue
        packed.state[p] = {key: torch.stack([s[key] for s in states]) if isinstance(states[0][key], Tensor)
                           else _per_job([s[key] for s in states], device, dtype) for key in states[0]}
    return packed


@dataclass
class Segment:
    """Jobs ``start … stop-1`` of a pack, which share one chain: one optimizer over the views ``P[start:stop]``."""

    start: int
    stop: int
    optimizer: ComposedOptimizer
    views: list[Tensor]
    rates: _LearningRates


def segment_bounds(signatures: list[str]) -> list[tuple[int, int]]:
    """The ``[start, stop)`` runs of equal signatures; raises when equal ones are not contiguous
    (the caller orders its jobs by chain first: :func:`chain_order`)."""
    bounds, seen = [], set()
    for j, signature in enumerate(signatures):
        if j == 0 or signature != signatures[j - 1]:
            if signature in seen:
                raise ValueError("jobs with the same optimizer chain must be contiguous in a pack")
            seen.add(signature)
            bounds.append([j, j + 1])
        else:
            bounds[-1][1] = j + 1
    return [tuple(b) for b in bounds]


def chain_order(optimizers: list[ComposedOptimizer]) -> list[int]:
    """Job positions ordered so that equal chains are contiguous (chains in order of first
    appearance, jobs in their own order within a chain)."""
    signatures = [chain_signature(opt) for opt in optimizers]
    first = {s: i for i, s in reversed(list(enumerate(signatures)))}
    return sorted(range(len(optimizers)), key=lambda j: (first[signatures[j]], j))


class PackOptimizer:
    """The jobs' optimizers over the stacked parameters ``P`` (``[J, …]`` each), one segment per chain.

    :meth:`step` runs the pack's closure once (one forward and backward for every job), hands
    each segment its slice of the gradient and steps the segment's chain with its jobs' own lrs.
    """

    def __init__(self, optimizers: list[ComposedOptimizer], params: list[Tensor], stacked=None):
        """``stacked``: the :class:`~precond.sweep.stacked_model.StackedModel` whose ``params`` these are
        (links tied to a model's layers, BNP, need its names, architecture and recorded moments)."""
        self.params = params
        device, dtype = params[0].device, params[0].dtype
        self.segments = []
        for start, stop in segment_bounds([chain_signature(opt) for opt in optimizers]):
            views = [p.detach()[start:stop] for p in params]  # share P's storage: updates land in P
            layout = None if stacked is None else PackLayout(stacked.names, views, stacked.base, stacked.moments,
                                                             start, stop, list(stacked.buffers.values()))
            self.segments.append(Segment(start, stop, stack_optimizer(optimizers[start:stop], views, layout), views,
                                         _LearningRates(device, dtype)))
        self.moments = stacked.moments if stacked is not None else None

    def _segment(self, job: int) -> Segment:
        return next(s for s in self.segments if s.start <= job < s.stop)

    def step(self, closure: Callable[[], Tensor], lrs: list[float]) -> Tensor:
        """One step of every job: ``closure`` (forward and backward of ``Σ_j f_j``, returning the
        per-job losses) runs once; ``lrs`` are the jobs' own learning rates (0 freezes a job)."""
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            losses = closure()
        for segment in self.segments:  # every segment's gradient first: a re-evaluation replaces P.grad
            for view, p in zip(segment.views, self.params):
                view.grad = None if p.grad is None else p.grad[segment.start:segment.stop]
        with torch.no_grad():
            for segment in self.segments:
                segment.optimizer.param_groups[0]["lr"] = segment.rates(lrs[segment.start:segment.stop])
                reevaluate = self._reevaluation(segment, closure) if segment.optimizer.needs_closure else None
                segment.optimizer.unhooked_step(reevaluate=reevaluate)
        return losses

    def _reevaluation(self, segment: Segment, closure: Callable[[], Tensor]) -> Callable[[], Tensor]:
        """The closure a segment's regularizer calls for an extra gradient (gradnorm's finite difference at
        perturbed parameters): the pack's forward and backward on the same minibatches, the segment's slice
        of the gradient in its views' ``.grad``. The stacked model's recorded input moments are those of the
        unperturbed forward again afterwards (BNP commits only those)."""
        def reevaluate() -> Tensor:
            moments = dict(self.moments) if self.moments is not None else None
            for p in self.params:
                p.grad = None
            with torch.enable_grad():
                losses = closure()
            for view, p in zip(segment.views, self.params):
                view.grad = None if p.grad is None else p.grad[segment.start:segment.stop]
            if moments is not None:
                self.moments.clear()
                self.moments.update(moments)
            return losses
        return reevaluate

    @torch.no_grad()
    def export(self, job: int, optimizer: ComposedOptimizer) -> None:
        """Job ``job``'s slice of the state into its own optimizer (its checkpoint and monitors read it)."""
        segment = self._segment(job)
        local = job - segment.start
        for view, solo in zip(segment.views, optimizer.param_groups[0]["params"]):
            state = segment.optimizer.state.get(view)
            if not state:
                continue
            # every tensor of a pack's state has the job axis first (stacked from the jobs' states, or
            # created by a link from the stacked parameters): the job's own entry is its slice
            optimizer.state[solo] = {key: value[local].clone() if isinstance(value, Tensor) and value.ndim >= 1
                                     else value for key, value in state.items()}

    @torch.no_grad()
    def freeze(self, job: int) -> None:
        """Zero job ``job``'s parameters and optimizer state (a diverged job: its values are written
        out already; zeros keep NaN/inf out of its segment's arithmetic)."""
        segment = self._segment(job)
        local = job - segment.start
        for view in segment.views:
            view[local].zero_()
            for value in segment.optimizer.state.get(view, {}).values():
                if isinstance(value, Tensor) and value.ndim >= 1 and value.is_floating_point():
                    value[local].zero_()

    @property
    def chains(self) -> int:
        return len(self.segments)

