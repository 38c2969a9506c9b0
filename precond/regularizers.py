"""Regularization in the chosen variable, ``p`` or ``z = P⁻¹ p`` (DESIGN.md §3).

Let ``u = p − η M g`` be the unregularized step, ``λ`` the strength
(``group["strength"]``), ``η`` the learning rate. A penalty on ``p`` adds its
gradient *before* the preconditioner (so it enters Adam's moments); a penalty
on ``z`` is differentiated in ``z`` and mapped back through ``P``, i.e. it is
added *after* the preconditioner and before momentum::

    L2, variable p:   p ← p − η M (g + λ p)            (torch Adam(weight_decay=λ))
    L2, variable z:   p ← (1 − ηλ) p − η M g           (torch AdamW(weight_decay=λ))

The strength follows torch's convention: the decay per step is ``η λ``.
Which tensors are penalized is the *policy*: ``all`` or ``weights``
(tensors with ``ndim ≥ 2``), the same for every preconditioner.
"""
from __future__ import annotations

import torch
from torch import Tensor

from precond.chain import Link, StepContext

POLICIES = ("all", "weights")


def regularized_indices(ctx: StepContext) -> list[int]:
    """Indices of ``ctx.params`` the group's policy penalizes (and only when λ > 0)."""
    if ctx.group["strength"] == 0:
        return []
    if ctx.group["policy"] == "weights":
        return [i for i, p in enumerate(ctx.params) if p.ndim >= 2]
    return list(range(len(ctx.params)))


def _add_scaled(ctx: StepContext, d: list[Tensor], idx: list[int], terms: list[Tensor], alpha: float) -> list[Tensor]:
    """``d[i] += alpha · terms[j]`` for ``i = idx[j]``, never writing into a gradient in place."""
    out = list(d)
    owned = [j for j, i in enumerate(idx) if d[i] is not ctx.grads[i]]
    shared = [j for j, i in enumerate(idx) if d[i] is ctx.grads[i]]
    if owned:
        torch._foreach_add_([d[idx[j]] for j in owned], [terms[j] for j in owned], alpha=alpha)
    if shared:
        new = torch._foreach_add([d[idx[j]] for j in shared], [terms[j] for j in shared], alpha=alpha)
        for j, t in zip(shared, new):
            out[idx[j]] = t
    return out


class L2(Link):
    """Penalty ``λ/2 ‖·‖²`` on ``p`` or on ``z``; both add ``λ p`` to the direction.

    Placed before the preconditioner (variable ``p``) the term is
    preconditioned: ``p ← p − η M (g + λ p)``. Placed after it (variable ``z``)
    it is decoupled decay ``p ← (1 − ηλ) p − η M g``: ``∇_z λ/2‖z‖²`` mapped
    back through ``P`` is ``P z = p``. The build function chooses the place.
    """

    namespace = "l2"

    def __init__(self, variable: str):
        self.variable = variable

    def transform(self, ctxs, directions):
        out = []
        for ctx, d in zip(ctxs, directions):
            idx = regularized_indices(ctx)
            out.append(_add_scaled(ctx, d, idx, [ctx.params[i] for i in idx], ctx.group["strength"]) if idx else d)
        return out


#: penalty name → link class; every class takes ``variable`` ("p" or "z")
REGULARIZERS: dict[str, type[Link]] = {"l2": L2}
VARIABLES = ("p", "z")
