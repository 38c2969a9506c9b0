"""Diagonal preconditioners and the momentum link (docs/theory.md §2).

Gradient descent on intrinsic parameters ``z`` with ``p = P z`` is
preconditioned gradient descent on ``p`` with ``M = P Pᵀ``::

    p ← p − η M g

Every preconditioner here is element-wise; it writes ``D`` with ``M = D⁻¹`` into
the step context (``P = D^{-1/2}``). PyTorch's conventions are followed
exactly (names, ε placement, bias correction) so that each one reproduces
``torch.optim`` to round-off:

==========  ==========================================  ===============================
name        state                                        ``D`` (so ``d = D⁻¹ g``)
==========  ==========================================  ===============================
sgd         —                                            ``1`` (``P = I``)
adagrad     ``s ← s + g²``                               ``(√s + ε)(1 + (k−1)·lr_decay)``
rmsprop     ``v ← αv + (1−α)g²`` (centered: ``v − ḡ²``)  ``√v + ε``
adam        ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``  ``√v̂ + ε``, direction ``m̂/D``
==========  ==========================================  ===============================

Each adaptive one takes a ``power`` ``q`` (default ½, torch's): ``√·`` above becomes ``(·)^q``. At
stationarity on least squares the second moment is proportional to ``diag(H)``, so ``q`` sets how much of
the scale part of ``κ(H)`` the preconditioner removes: ``κ(PᵀHP) ≈ κ(H)^{1−q}`` there (docs/theory.md §2).

``g`` is the incoming direction: the raw gradient plus any p-regularizer term,
so an L2 penalty on ``p`` enters Adam's moments (torch ``Adam(weight_decay)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor

from precond.chain import Hyper, Link, StepContext, add_scaled, add_scaled_, addcmul_, hmap, is_zero, pick
from precond.errors import ConfigError
from precond.preconditioner_operator import Diagonal
from precond.settings import LEARNING_RATE, Flag, Num, Seq, Settings, Text, is_number, setting


def _zeros_state(state: dict, key: str, like: Tensor, fill=0.0) -> Tensor:
    """The state tensor ``key``, created as ``fill`` (a number, or a per-job view) the first time."""
    if key not in state:
        if isinstance(fill, Tensor):
            state[key] = torch.zeros_like(like, memory_format=torch.preserve_format).add_(fill)
        else:
            state[key] = torch.full_like(like, fill, memory_format=torch.preserve_format)
    return state[key]


def _sqrt(x):
    """√x for a number (math.sqrt: correctly rounded, as torch.optim) or a per-job tensor."""
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


def _power(x, q):
    """``x^q`` for a number or a per-job tensor; ``q = ½`` is :func:`_sqrt` (correctly rounded, as torch.optim)."""
    if is_number(q) and q == 0.5:
        return _sqrt(x)
    return x**q


def _roots(xs: list[Tensor], q: Hyper) -> list[Tensor]:
    """``x^q`` element-wise over a list of tensors (new tensors); ``q = ½`` is torch.optim's sqrt.
    ``q`` is a number or one per-job view per tensor (a pack whose jobs differ in ``power``)."""
    if not isinstance(q, list) and q == 0.5:
        return torch._foreach_sqrt(xs)
    return torch._foreach_pow(torch._foreach_clamp_min(xs, 0.0), q)


def _each(h, n: int) -> list:
    """A hyperparameter as one entry per parameter."""
    return h if isinstance(h, list) else [h] * n


def _advance_step(ctx: StepContext, key: str) -> list[int]:
    """Increment and return each param's step counter (Python ints, like torch's ``step``)."""
    steps = []
    for state in ctx.states:
        state[key] = int(state.get(key, 0)) + 1
        steps.append(state[key])
    return steps


class Preconditioner(Link):
    """Base class: a link that turns ``g`` into ``d = M g`` and records ``D``.

    A diagonal preconditioner records ``D`` (``M = D⁻¹``) in the step context, where z-space links read
    it, and :meth:`denominator` gives it between steps. A non-diagonal one (``diagonal = False``) records
    nothing in the context and exposes ``P`` only through :meth:`blocks`; the build function refuses the
    links that would read a diagonal ``P`` from it.
    """

    #: keep ``D`` in the context (set by the build function when a later link reads ``P``)
    keep_denominator: bool = False
    #: ``M`` is element-wise (``D`` in the step context); False for Kronecker and dense ``P``
    diagonal: ClassVar[bool] = True
    #: :meth:`blocks` gives ``P`` (False for a black-box optimizer: nothing in z can be measured)
    exposes_P: ClassVar[bool] = True

    def blocks(self, group: dict, states: list[dict], params: list[Tensor], starts: list[int]) -> list:
        """``P``'s blocks over ``params`` (``starts``: each one's offset in the flat parameter vector), from
        the current state without stepping (:mod:`precond.preconditioner_operator`). Diagonal by default:
        ``P = D^{-1/2}`` from :meth:`denominator`; a parameter without a block has ``P = I``."""
        out = []
        for param, state, start in zip(params, states, starts):
            d = self.denominator(group, state, param)
            if d is not None:
                out.append(Diagonal(start, d.detach().reshape(-1).rsqrt()))
        return out

    def denominator(self, group: dict, state: dict, param: Tensor) -> Optional[Tensor]:
        """``D`` (``M = D⁻¹``) implied by the current state, without stepping.

        Used to measure ``κ(Pᵀ H P)`` with ``P = D^{-1/2}`` at a given step.
        Returns None for ``P = I``; raises if the state is still empty.
        """
        return None

    def _require(self, state: dict, key: str) -> Tensor:
        if key not in state:
            raise RuntimeError(
                f"preconditioner '{self.namespace}' has no state yet: take at least one "
                "optimizer step before reading P"
            )
        return state[key]


class SGD(Preconditioner):
    """``P = I``: the direction is the gradient itself (momentum is a separate link)."""

    namespace = "sgd"


class Adagrad(Preconditioner):
    """AdaGrad: ``s ← s + g²``, ``d = g / ((√s + ε)(1 + (k−1)·lr_decay))`` (torch.optim.Adagrad)."""

    namespace = "adagrad"

    def transform(self, ctxs, directions):
        out = []
        for ctx, g in zip(ctxs, directions):
            n = len(ctx.params)
            fills = _each(ctx.hyper("initial_accumulator_value"), n)
            sums = [_zeros_state(s, self.key("sum"), p, f) for p, s, f in zip(ctx.params, ctx.states, fills)]
            steps = _advance_step(ctx, self.key("step"))
            torch._foreach_addcmul_(sums, g, g, value=1.0)
            denom = _roots(sums, ctx.hyper("power"))
            torch._foreach_add_(denom, ctx.hyper("eps"))
            decay = [1.0 + (k - 1) * r for k, r in zip(steps, _each(ctx.hyper("lr_decay"), n))]
            if any(isinstance(f, Tensor) or f != 1.0 for f in decay):
                torch._foreach_mul_(denom, decay)
            ctx.denominator = denom
            out.append(torch._foreach_div(g, denom))
        return out

    def denominator(self, group, state, param):
        s = self._require(state, self.key("sum"))
        k = int(state[self.key("step")])
        return (_power(s, group["power"]) + group["eps"]) * (1.0 + (k - 1) * group["lr_decay"])


class RMSprop(Preconditioner):
    """RMSProp: ``v ← αv + (1−α)g²``; ``d = g / (√v + ε)``; centered uses ``v − ḡ²`` (torch.optim.RMSprop)."""

    namespace = "rmsprop"

    def transform(self, ctxs, directions):
        out = []
        for ctx, g in zip(ctxs, directions):
            alpha = ctx.hyper("alpha")
            one_minus_alpha = hmap(lambda a: 1.0 - a, alpha)
            sq = [_zeros_state(s, self.key("square_avg"), p) for p, s in zip(ctx.params, ctx.states)]
            _advance_step(ctx, self.key("step"))
            torch._foreach_mul_(sq, alpha)
            addcmul_(sq, g, g, one_minus_alpha)
            if ctx.group["centered"]:
                gavg = [_zeros_state(s, self.key("grad_avg"), p) for p, s in zip(ctx.params, ctx.states)]
                torch._foreach_lerp_(gavg, g, one_minus_alpha)
                denom = _roots(torch._foreach_addcmul(sq, gavg, gavg, value=-1.0), ctx.hyper("power"))
            else:
                denom = _roots(sq, ctx.hyper("power"))
            torch._foreach_add_(denom, ctx.hyper("eps"))
            ctx.denominator = denom
            out.append(torch._foreach_div(g, denom))
        return out

    def denominator(self, group, state, param):
        v = self._require(state, self.key("square_avg"))
        if group["centered"]:
            gavg = state[self.key("grad_avg")]
            v = v - gavg * gavg
        return _power(v.clamp_min(0.0), group["power"]) + group["eps"]


class Adam(Preconditioner):
    """Adam: ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``; ``d = m̂ / (√v̂ + ε)``.

    Hats are bias corrections ``m̂ = m/(1−β₁ᵏ)``, ``v̂ = v/(1−β₂ᵏ)`` (torch.optim.Adam).
    ``M = (√v̂ + ε)⁻¹`` is applied to the first moment, so Adam is
    preconditioned *heavy-ball* descent; its momentum lives in ``m``.
    """

    namespace = "adam"

    def transform(self, ctxs, directions):
        out = []
        for ctx, g in zip(ctxs, directions):
            n = len(ctx.params)
            beta1, beta2, eps = ctx.hyper("betas", 0), ctx.hyper("betas", 1), ctx.hyper("eps")
            m = [_zeros_state(s, self.key("exp_avg"), p) for p, s in zip(ctx.params, ctx.states)]
            v = [_zeros_state(s, self.key("exp_avg_sq"), p) for p, s in zip(ctx.params, ctx.states)]
            steps = _advance_step(ctx, self.key("step"))
            torch._foreach_lerp_(m, g, hmap(lambda b: 1.0 - b, beta1))
            torch._foreach_mul_(v, beta2)
            addcmul_(v, g, g, hmap(lambda b: 1.0 - b, beta2))
            bc1 = [1.0 - b**k for b, k in zip(_each(beta1, n), steps)]
            q = ctx.hyper("power")
            bc2_sqrt = [_power(1.0 - b**k, qi) for b, k, qi in zip(_each(beta2, n), steps, _each(q, n))]
            denom = _roots(v, q)
            if self.keep_denominator:
                # D = √v̂ + ε is read by later links; d = (m / bc1) / D
                torch._foreach_div_(denom, bc2_sqrt)
                torch._foreach_add_(denom, eps)
                ctx.denominator = denom
                d = torch._foreach_div(m, denom)
                torch._foreach_div_(d, bc1)
            else:
                # fold 1/bc1 into the denominator and reuse its memory: d = m / (bc1·D)
                torch._foreach_mul_(denom, [b1 / b2 for b1, b2 in zip(bc1, bc2_sqrt)])
                torch._foreach_add_(denom, [e * b1 for e, b1 in zip(_each(eps, n), bc1)])
                torch._foreach_reciprocal_(denom)
                torch._foreach_mul_(denom, m)
                d = denom
            out.append(d)
        return out

    def denominator(self, group, state, param):
        v = self._require(state, self.key("exp_avg_sq"))
        k = int(state[self.key("step")])
        _, beta2 = group["betas"]
        return _power(v / (1.0 - beta2**k), group["power"]) + group["eps"]


class Momentum(Link):
    """Heavy-ball momentum on the (preconditioned, regularized) direction, torch.optim.SGD semantics.

    ``b ← d`` at the first step, then ``b ← μ b + (1 − dampening) d``;
    the direction becomes ``b`` (or ``d + μ b`` with Nesterov).
    RMSprop's ``momentum`` is the same link with dampening 0.
    """

    namespace = "momentum"

    def transform(self, ctxs, directions):
        out = []
        for ctx, d in zip(ctxs, directions):
            mu = ctx.hyper("momentum")
            if is_zero(mu):
                out.append(d)
                continue
            dampening = ctx.hyper("dampening") if "dampening" in ctx.group else 0.0
            key = self.key("buffer")
            fresh = [i for i, state in enumerate(ctx.states) if key not in state]
            for i in fresh:
                ctx.states[i][key] = torch.clone(d[i]).detach()
            seen = set(fresh)
            old = [i for i in range(len(ctx.states)) if i not in seen]
            if old:
                olds = [ctx.states[i][key] for i in old]
                torch._foreach_mul_(olds, pick(mu, old))
                add_scaled_(olds, [d[i] for i in old], pick(hmap(lambda x: 1.0 - x, dampening), old))
            bufs = [state[key] for state in ctx.states]
            out.append(add_scaled(d, bufs, mu) if ctx.group.get("nesterov", False) else bufs)
        return out


@dataclass(frozen=True)
class PreconditionerSettings(Settings):
    """A preconditioner by name, its default learning rate and its torch.optim hyperparameters.

    One subclass per preconditioner (the ``preconditioner`` config group's ``_target_``); its
    fields are torch.optim's names with torch's defaults and the ranges torch enforces.
    ``lr`` is this preconditioner's default ``η`` (the config's top-level ``lr`` starts from it).
    """

    NAME: ClassVar[str] = ""
    #: the link class that steps with these settings (precond's own are in :data:`PRECONDITIONERS`; a package's
    #: settings class names its own link here: docs/extending.md)
    LINK: ClassVar[Optional[type]] = None
    #: False when ``P`` is not diagonal: the penalties that read a diagonal ``P`` are refused with it
    DIAGONAL: ClassVar[bool] = True
    #: False when the optimizer exposes no ``P`` (a black box): penalties in z and claims on z metrics are refused
    EXPOSES_P: ClassVar[bool] = True
    name: str = setting(Text(), "")
    lr: float = setting(LEARNING_RATE, 1e-3, doc="default learning rate η")

    def check(self) -> None:
        if self.name != self.NAME:
            raise ConfigError("name", f"'{self.NAME}' (the name of this preconditioner's settings)", self.name,
                              f"pick another preconditioner with preconditioner=<name>, not {self.NAME}'s name key")

    def hyper(self) -> dict:
        """The torch.optim hyperparameters (everything but ``name`` and ``lr``)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("name", "lr")}


#: heavy-ball coefficient μ (torch allows any μ >= 0; μ > 1 only diverges)
MOMENTUM = Num(0, 1)
EPS = Num(0, lo_open=True)
#: the exponent q of the second moment in ``D = v^q + ε`` (docs/theory.md §2: ½ is torch.optim's; 0 is SGD's
#: direction, 1 cancels the gradient's scale entirely)
POWER = Num(0, 1)


def power_setting():
    return setting(POWER, 0.5, doc="q in D = v^q + ε (torch.optim: 0.5)")


@dataclass(frozen=True)
class SGDSettings(PreconditionerSettings):
    """``P = I``; torch.optim.SGD's momentum, dampening and Nesterov."""

    NAME: ClassVar[str] = "sgd"
    name: str = setting(Text(), "sgd")
    momentum: float = setting(MOMENTUM, 0.0)
    dampening: float = setting(Num(0, 1), 0.0)
    nesterov: bool = setting(Flag(), False)

    def check(self) -> None:
        super().check()
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError("nesterov", "false unless momentum > 0 and dampening = 0 (torch's rule)", True,
                              "set momentum>0 and dampening=0, or nesterov=false")


@dataclass(frozen=True)
class AdagradSettings(PreconditionerSettings):
    """AdaGrad with torch.optim.Adagrad's names; ``momentum`` is a heavy-ball extension (torch has none)."""

    NAME: ClassVar[str] = "adagrad"
    name: str = setting(Text(), "adagrad")
    lr_decay: float = setting(Num(0), 0.0)
    eps: float = setting(EPS, 1e-10)
    power: float = power_setting()
    initial_accumulator_value: float = setting(Num(0), 0.0)
    momentum: float = setting(MOMENTUM, 0.0)


@dataclass(frozen=True)
class RMSpropSettings(PreconditionerSettings):
    """RMSprop with torch.optim.RMSprop's names (``centered``: ``v − ḡ²``)."""

    NAME: ClassVar[str] = "rmsprop"
    name: str = setting(Text(), "rmsprop")
    alpha: float = setting(Num(0, 1), 0.99)
    eps: float = setting(EPS, 1e-8)
    power: float = power_setting()
    centered: bool = setting(Flag(), False)
    momentum: float = setting(MOMENTUM, 0.0)


@dataclass(frozen=True)
class AdamSettings(PreconditionerSettings):
    """Adam with torch.optim.Adam's names; bias-corrected moments."""

    NAME: ClassVar[str] = "adam"
    name: str = setting(Text(), "adam")
    betas: tuple = setting(Seq(Num(0, 1, hi_open=True), 2, 2), (0.9, 0.999), fix="e.g. [0.9, 0.999]")
    eps: float = setting(EPS, 1e-8)
    power: float = power_setting()


#: name → (link class, settings class) of the diagonal preconditioners
PRECONDITIONERS: dict[str, tuple[type[Preconditioner], type[PreconditionerSettings]]] = {
    "sgd": (SGD, SGDSettings),
    "adagrad": (Adagrad, AdagradSettings),
    "rmsprop": (RMSprop, RMSpropSettings),
    "adam": (Adam, AdamSettings),
}


def loaded_settings_classes() -> list[type[PreconditionerSettings]]:
    """Every named preconditioner settings class loaded: precond's and the installed packages'
    (:func:`precond.extensions.load_extensions`). Subclassing the base is what makes a class an option."""
    out, todo = [], [PreconditionerSettings]
    while todo:
        cls = todo.pop()
        if cls.NAME:
            out.append(cls)
        todo += cls.__subclasses__()
    return out


def settings_class(name: str) -> Optional[type[PreconditionerSettings]]:
    """The loaded settings class whose ``NAME`` is ``name``, or None."""
    return next((cls for cls in reversed(loaded_settings_classes()) if cls.NAME == name), None)


def diagonal_settings(name: str, **values) -> PreconditionerSettings:
    """The settings of diagonal preconditioner ``name`` from keyword arguments (unknown keys refused)."""
    if name not in PRECONDITIONERS:
        raise ConfigError("name", f"one of {sorted(PRECONDITIONERS)}", name)
    return PRECONDITIONERS[name][1].from_mapping({"name": name, **values})
