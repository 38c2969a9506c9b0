"""The step context and the link interface shared by every optimizer link.

An optimizer step is a chain of *links* (docs/theory.md §6)::

    p-regularizers → preconditioner → z-regularizers → momentum → update → prox

Each link reads the working update direction ``d`` (a list of tensors, one per
parameter with a gradient) and returns the next one; the optimizer finally does
``p ← p − η d`` and then runs the post-update links (proximal maps).

The preconditioner records the diagonal of ``M = P Pᵀ`` in the context as its
*denominator* ``D`` (``M = D⁻¹`` element-wise, ``P = D^{-1/2}``), so the
z-regularizers can read ``P`` at the step they run. ``D is None`` means
``P = I`` (plain SGD).

A hyperparameter in a param group is a Python number (one run), or a 1-D tensor with
one entry per job when several runs are trained as one stacked model
(:mod:`precond.sweep.pack_training`: every parameter then has a leading job axis). Links read
hyperparameters through :meth:`StepContext.hyper`, which gives either the number or
one view per parameter shaped ``[J, 1, …, 1]`` that broadcasts along that axis (the
group's ``stacked`` flag says the parameters carry it), and combine them with the
helpers below, so the mathematics is written once for both.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

#: a hyperparameter as the links use it: a number, or one broadcastable tensor per parameter
Hyper = Union[float, list[Tensor]]


def per_param(value, params: list[Tensor]) -> Hyper:
    """``value`` unchanged when it is a number; a per-job tensor ``[J]`` as one view ``[J, 1, …, 1]``
    per parameter (the parameters' leading axis is the job axis)."""
    if not isinstance(value, Tensor):
        return value
    return [value.view(-1, *([1] * (p.ndim - 1))) for p in params]


def pick(h: Hyper, indices: list[int]) -> Hyper:
    """The hyperparameter restricted to the parameters at ``indices``."""
    return [h[i] for i in indices] if isinstance(h, list) else h


def hmap(fn: Callable, *hs: Hyper) -> Hyper:
    """``fn`` applied to numbers, or element-wise over the per-parameter lists (numbers are broadcast)."""
    lists = [h for h in hs if isinstance(h, list)]
    if not lists:
        return fn(*hs)
    n = len(lists[0])
    return [fn(*vals) for vals in zip(*[h if isinstance(h, list) else [h] * n for h in hs])]


def is_zero(h: Hyper) -> bool:
    """True only for the number 0 (a per-job tensor is never skipped: its zero entries act as 0)."""
    return not isinstance(h, list) and h == 0


def add_scaled_(xs: list[Tensor], ys: list[Tensor], alpha: Hyper) -> None:
    """``x ← x + α y`` in place. A per-job ``α`` (a pack's tensors) goes through ``addcmul``: one pass
    and no temporary, and in float32 the same rounding as a scalar ``α`` alone (``mul`` then ``add``
    rounds the product first: one ulp apart)."""
    if isinstance(alpha, list):
        torch._foreach_addcmul_(xs, ys, alpha)
    else:
        torch._foreach_add_(xs, ys, alpha=alpha)


def add_scaled(xs: list[Tensor], ys: list[Tensor], alpha: Hyper) -> list[Tensor]:
    """``x + α y`` (new tensors); a per-job ``α`` as in :func:`add_scaled_`."""
    if isinstance(alpha, list):
        return torch._foreach_addcmul(xs, ys, alpha)
    return torch._foreach_add(xs, ys, alpha=alpha)


def addcmul_(xs: list[Tensor], a: list[Tensor], b: list[Tensor], value: Hyper) -> None:
    """``x ← x + value · a · b`` in place."""
    if isinstance(value, list):
        torch._foreach_addcmul_(xs, torch._foreach_mul(a, value), b)
    else:
        torch._foreach_addcmul_(xs, a, b, value=value)


@dataclass
class StepContext:
    """Everything one link may read about one parameter group at one step.

    Attributes:
        group: the torch param-group dict (hyperparameters, ``lr``).
        params: parameters of the group that have a gradient.
        grads: their gradients ``g`` at the current point (never modified).
        states: ``optimizer.state[p]`` for each param (namespaced keys).
        closure: the user's closure, or None.
        denominator: ``D`` with ``M = D⁻¹`` element-wise; None means ``M = I``.
        graph_grads: param → gradient that still carries its graph (double-backward
            Hessian-vector products), or None.
    """

    group: dict
    params: list[Tensor]
    grads: list[Tensor]
    states: list[dict]
    closure: Optional[Callable[[], Tensor]] = None
    denominator: Optional[list[Tensor]] = None
    graph_grads: Optional[dict] = None

    @property
    def lr(self) -> Hyper:
        return self.hyper("lr")

    def hyper(self, name: str, index: Optional[int] = None) -> Hyper:
        """The group's hyperparameter ``name`` (``index``: an entry of a tuple such as ``betas``)
        as a number or one per-job view per parameter (see :func:`per_param`)."""
        value = self.group[name] if index is None else self.group[name][index]
        return per_param(value, self.params)

    def P(self, indices: list[int]) -> Optional[list[Tensor]]:
        """``P = D^{-1/2}`` for the params at ``indices`` (None when ``P = I``)."""
        if self.denominator is None:
            return None
        return torch._foreach_rsqrt([self.denominator[i] for i in indices])

    def M(self, indices: list[int]) -> Optional[list[Tensor]]:
        """``M = D⁻¹`` for the params at ``indices`` (None when ``M = I``)."""
        if self.denominator is None:
            return None
        return torch._foreach_reciprocal([self.denominator[i] for i in indices])


class Link:
    """One transformation of the update direction.

    Subclasses set ``namespace`` (prefix of their keys in ``optimizer.state``)
    and override :meth:`transform` (direction links) or :meth:`after_update`
    (post-update links such as proximal maps).
    """

    namespace: str = ""
    #: True when the link reads ``P`` or ``M`` from the context (so the
    #: preconditioner must keep its denominator instead of reusing its memory).
    needs_precond: bool = False
    #: True when the link re-evaluates the closure (extra gradients).
    needs_closure: bool = False

    def transform(self, ctxs: list[StepContext], directions: list[list[Tensor]]) -> list[list[Tensor]]:
        """Map the directions of every group (one list per group) to new ones."""
        return directions

    def after_update(self, ctxs: list[StepContext]) -> None:
        """Act on the parameters after ``p ← p − η d`` (proximal maps)."""

    def begin_step(self, optimizer) -> None:
        """Called once per step, after the closure and before any transform (BNP commits statistics)."""

    def key(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def for_pack(self, layout: PackLayout) -> Link:
        """This link for jobs ``layout.start … stop-1`` of a pack. Links that only do arithmetic on the
        parameters and their state are copied; a link tied to a model's own layers (BNP) rebuilds
        itself on the stacked parameters."""
        return copy.deepcopy(self)


@dataclass
class PackLayout:
    """What a link may need to know about the pack it steps (:mod:`precond.sweep.pack_training`):
    the stacked parameters' names and the segment's views of them (``[stop-start, …]``), the
    architecture (``base``, on the meta device), the per-job input moments the stacked
    model records at each training forward, and its stacked buffers."""

    names: list[str]
    views: list[Tensor]
    base: object
    moments: dict
    start: int
    stop: int
    #: the stacked buffers (BatchNorm's running statistics of every job)
    buffers: list = None
