"""The step context and the link interface shared by every optimizer link.

An optimizer step is a chain of *links* (DESIGN.md §6)::

    p-regularizers → preconditioner → z-regularizers → momentum → update → prox

Each link reads the working update direction ``d`` (a list of tensors, one per
parameter with a gradient) and returns the next one; the optimizer finally does
``p ← p − η d`` and then runs the post-update links (proximal maps).

The preconditioner records the diagonal of ``M = P Pᵀ`` in the context as its
*denominator* ``D`` (``M = D⁻¹`` element-wise, ``P = D^{-1/2}``), so the
z-regularizers can read ``P`` at the step they run. ``D is None`` means
``P = I`` (plain SGD).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


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
    def lr(self) -> float:
        return float(self.group["lr"])

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
