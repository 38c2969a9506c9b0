"""Adamax (torch.optim.Adamax) as a diagonal preconditioner.

``m ← β₁m + (1−β₁)g``, ``u ← max(β₂u, |g| + ε)``; ``d = m / ((1−β₁ᵏ) u)``. So ``M = D⁻¹`` with
``D = (1−β₁ᵏ) u`` applied to the first moment: the infinity-norm cousin of Adam. Because it records ``D``
and says how to read it between steps (:meth:`Adamax.denominator`), κ(PᵀHP) with ``P = D^{-1/2}`` is measured
for it like for precond's own preconditioners.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from precond.preconditioners import EPS, Preconditioner, PreconditionerSettings
from precond.settings import Num, Seq, Text, setting


class Adamax(Preconditioner):
    namespace = "adamax"

    def transform(self, ctxs, directions):
        out = []
        for ctx, g in zip(ctxs, directions):
            beta1, beta2 = ctx.group["betas"]
            ds = []
            for grad, state, param in zip(g, ctx.states, ctx.params):
                if self.key("step") not in state:
                    state[self.key("step")] = 0
                    state[self.key("exp_avg")] = torch.zeros_like(param)
                    state[self.key("exp_inf")] = torch.zeros_like(param)
                state[self.key("step")] += 1
                m, u = state[self.key("exp_avg")], state[self.key("exp_inf")]
                m.lerp_(grad, 1 - beta1)
                torch.maximum(u.mul_(beta2), grad.abs().add_(ctx.group["eps"]), out=u)
                ds.append(m / ((1 - beta1 ** state[self.key("step")]) * u))
            out.append(ds)
        return out

    def denominator(self, group, state, param):
        u = self._require(state, self.key("exp_inf"))
        return (1 - group["betas"][0] ** state[self.key("step")]) * u


@dataclass(frozen=True)
class AdamaxSettings(PreconditionerSettings):
    """Adamax with torch.optim.Adamax's names and defaults."""

    NAME: ClassVar[str] = "adamax"
    LINK: ClassVar[type] = Adamax
    name: str = setting(Text(), "adamax")
    betas: tuple = setting(Seq(Num(0, 1, hi_open=True), 2, 2), (0.9, 0.999), fix="e.g. [0.9, 0.999]")
    eps: float = setting(EPS, 1e-8)
