"""The composed optimizer and the one function that builds it.

A step runs an ordered chain (docs/theory.md §6)::

    p-regularizers → preconditioner → z-regularizers → momentum → p ← p − η d → prox

``build_optimizer`` is the only place that knows "variable p = before the
preconditioner, variable z = after it". The maths lives in the links
(:mod:`precond.preconditioners`, :mod:`precond.regularizers`); state lives in
``optimizer.state[param]`` under namespaced keys (``adam.exp_avg``,
``momentum.buffer``, ...), so ``state_dict()`` round-trips and LR schedulers
work as for any ``torch.optim.Optimizer``.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Optional, Union

import torch
from torch import Tensor

from precond.black_box import TorchOptimizer, TorchOptimSettings, build_black_box
from precond.bnp import BNPSettings, BNPTransform, check_model_for_bnp
from precond.chain import Link, StepContext, add_scaled_, hmap
from precond.combinations import check_combinations
from precond.errors import ConfigError
from precond.extensions import load_extensions
from precond.matrix_preconditioners import MATRIX_PRECONDITIONERS, MatrixPreconditionerSettings
from precond.preconditioner_operator import PreconditionerOperator
from precond.preconditioners import (
    PRECONDITIONERS,
    Momentum,
    Preconditioner,
    PreconditionerSettings,
    diagonal_settings,
    loaded_settings_classes,
    settings_class,
)
from precond.regularizers import BackwardCreatesGraph, Penalty, RegularizationSpec, make_penalty

ParamsT = Union[Iterable[Tensor], Iterable[dict]]

#: every preconditioner build_optimizer can name (besides bnp, which wraps a diagonal one): name → (link, settings)
ALL_PRECONDITIONERS = {**PRECONDITIONERS, **MATRIX_PRECONDITIONERS}


def _without_dynamo_wrapper(name: str):
    """``torch.optim.Optimizer``'s method ``name`` without its ``torch._disable_dynamo`` wrapper.

    The wrapper imports ``torch._dynamo`` on its first call (about 1 s per process, more than
    a short run trains). It only matters when dynamo traces the optimizer, which precond never
    asks for (``compile=true`` compiles the model's forward), so the undecorated method does
    the same work without the import.
    """
    method = getattr(torch.optim.Optimizer, name)
    return getattr(method, "__wrapped__", method)


class ComposedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose step is a chain of links.

    Args:
        params: tensors or torch param-group dicts.
        defaults: hyperparameters copied into every param group (``lr``,
            preconditioner and regularizer settings).
        preconditioner: the link that computes ``d = M g``.
        before: links applied to ``g`` before the preconditioner (variable p).
        after: links applied to ``d`` after it (variable z).
        momentum: heavy-ball link, or None when the preconditioner has its own.
        post: links applied to ``p`` after the update (proximal maps).
    """

    add_param_group = _without_dynamo_wrapper("add_param_group")
    zero_grad = _without_dynamo_wrapper("zero_grad")
    state_dict = _without_dynamo_wrapper("state_dict")
    load_state_dict = _without_dynamo_wrapper("load_state_dict")

    def __init__(
        self,
        params: ParamsT,
        defaults: dict,
        preconditioner: Preconditioner,
        before: list[Link] = (),
        after: list[Link] = (),
        momentum: Optional[Link] = None,
        post: list[Link] = (),
    ):
        super().__init__(params, defaults)
        self.chain = (preconditioner, list(before), list(after), momentum, list(post))
        self.preconditioner = preconditioner
        self.direction_links: list[Link] = [*before, preconditioner, *after, *([momentum] if momentum else [])]
        self.post_links: list[Link] = list(post)
        self.links = links = self.direction_links + self.post_links
        self.penalty: Optional[Penalty] = next((link for link in links if isinstance(link, Penalty)), None)
        self.needs_closure = any(link.needs_closure for link in links)
        self.needs_graph = any(getattr(link, "needs_graph", False) for link in links)
        preconditioner.keep_denominator = any(link.needs_precond for link in links)
        if not preconditioner.diagonal and preconditioner.keep_denominator:
            reader = next(type(link).__name__ for link in links if link.needs_precond)
            raise ConfigError("regularization", f"a penalty that does not read a diagonal P with preconditioner="
                              f"{preconditioner.namespace} (its P is not diagonal)", reader,
                              "use l2 (either variable: in z it is decoupled weight decay for any P), gradnorm or "
                              "l1 form=subgradient in variable=p")

    def with_chain_over(self, params: ParamsT, defaults: dict, layout=None) -> ComposedOptimizer:
        """A new optimizer with copies of this one's links over other parameters and hyperparameters
        (packed training: the same chain on stacked parameters with per-job hyperparameters; each link
        is rebuilt for the pack's ``layout``, :meth:`precond.chain.Link.for_pack`)."""
        if layout is None:
            preconditioner, before, after, momentum, post = copy.deepcopy(self.chain)
        else:
            preconditioner, before, after, momentum, post = (
                link.for_pack(layout) if link is not None and not isinstance(link, list)
                else [x.for_pack(layout) for x in link] if link is not None else None for link in self.chain)
        return ComposedOptimizer(params, defaults, preconditioner, before=before, after=after, momentum=momentum,
                                 post=post)

    def _contexts(self, closure, graph_grads) -> list[StepContext]:
        ctxs = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("precond optimizers do not support sparse gradients")
            ctxs.append(
                StepContext(
                    group=group,
                    params=params,
                    grads=[p.grad for p in params],
                    states=[self.state[p] for p in params],
                    closure=closure,
                    graph_grads=graph_grads,
                )
            )
        return ctxs

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None,
             reevaluate: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """One step. ``closure`` (zero_grad, forward, backward, return loss) is
        required when a regularizer needs extra gradients. ``reevaluate``: the gradients are
        already in ``p.grad`` and this closure serves only the regularizer's extra evaluations
        (a pack, whose forward and backward ran once for all its jobs)."""
        return self.unhooked_step(closure, reevaluate)

    def unhooked_step(self, closure: Optional[Callable[[], Tensor]] = None,
                      reevaluate: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """:meth:`step` without torch.optim's wrapper (its profiler record and its global step hooks, about
        20 µs a call, a tenth of a small pack's step when every chain of the pack pays it), for a caller
        that already runs under ``torch.no_grad()``: a pack's internal optimizers, which nothing hooks."""
        if closure is None and reevaluate is None and self.needs_closure:
            raise RuntimeError(
                "this optimizer's regularizer needs extra gradients: call "
                "optimizer.step(closure) with a closure that zeroes grads, runs forward "
                "and backward, and returns the loss"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad(), (BackwardCreatesGraph() if self.needs_graph else contextlib.nullcontext()):
                loss = closure()
        graph_grads = self._detach_graph_grads() if self.needs_graph else None
        for link in self.links:
            link.begin_step(self)
        ctxs = self._contexts(closure if reevaluate is None else reevaluate, graph_grads)
        if not ctxs:
            return loss
        directions = [ctx.grads for ctx in ctxs]
        for link in self.direction_links:
            directions = link.transform(ctxs, directions)
        for ctx, d in zip(ctxs, directions):
            add_scaled_(ctx.params, d, hmap(lambda lr: -lr, ctx.lr))
        for link in self.post_links:
            link.after_update(ctxs)
        return loss

    def _detach_graph_grads(self) -> dict[Tensor, Tensor]:
        """Keep the differentiable gradients for Hessian-vector products; leave ``p.grad`` plain."""
        graph_grads = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    graph_grads[p] = p.grad
                    p.grad = p.grad.detach()
        if graph_grads and not any(g.requires_grad for g in graph_grads.values()):
            raise RuntimeError(
                "gradnorm backend 'double_backward' found no graph on the gradients: the closure must "
                "compute them with loss.backward(); otherwise use backend='finite_difference'"
            )
        return graph_grads

    @torch.no_grad()
    def regularization_metrics(self) -> dict[str, float]:
        """``reg/penalty`` (on p; the last ``λ½‖g‖²`` or ``λ½gᵀMg`` for gradnorm) and ``reg/sparsity``
        (fraction of exactly-zero entries among the penalized tensors)."""
        if self.penalty is None:
            return {}
        groups = [(g["strength"], [p for p in g["params"] if g["policy"] == "all" or p.ndim >= 2])
                  for g in self.param_groups if g["strength"] > 0]
        groups = [(strength, params) for strength, params in groups if params]
        if not groups:
            return {}
        params = [p for _, ps in groups for p in ps]
        zeros = sum(int((p == 0).sum()) for p in params)
        out = {"reg/sparsity": zeros / sum(p.numel() for p in params)}
        value = self.penalty.value(groups, self.state)
        if value is not None:
            out["reg/penalty"] = value
        return out

    def penalty_share_totals(self) -> Optional[tuple[float, int]]:
        """The penalty's running ``(Σ share, steps)`` (:meth:`precond.regularizers.Penalty.share_totals`)."""
        return None if self.penalty is None else self.penalty.share_totals(self.state)

    def preconditioner_denominators(self) -> list[tuple[Tensor, Optional[Tensor]]]:
        """``(param, D)`` for every parameter, ``M = D⁻¹``, from the current state.

        ``D is None`` means ``P = I``. Used to form ``Pᵀ H P`` at the step of
        measurement without taking a step.
        """
        if any(isinstance(link, BNPTransform) for link in self.direction_links):
            raise NotImplementedError(
                "BNP's preconditioner is block-diagonal per neuron ([w_i, b_i]), not diagonal: "
                "z-space curvature is not implemented for it; measure space='p'"
            )
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                out.append((p, self.preconditioner.denominator(group, self.state[p], p)))
        return out

    def preconditioner_operator(self, params: Sequence[Tensor]) -> PreconditionerOperator:
        """``P`` over the flat vector of ``params`` (in that order) from the current state, as an operator
        (:mod:`precond.preconditioner_operator`); parameters this optimizer does not step have ``P = I``."""
        if any(isinstance(link, BNPTransform) for link in self.direction_links):
            raise NotImplementedError(
                "BNP's preconditioner is block-diagonal per neuron ([w_i, b_i]) and its blocks are not exposed: "
                "z-space curvature is not implemented for it; measure space='p'"
            )
        offsets, start = {}, 0
        for p in params:
            offsets[id(p)] = start
            start += p.numel()
        blocks = []
        for group in self.param_groups:
            mine = [p for p in group["params"] if id(p) in offsets]
            blocks += self.preconditioner.blocks(group, [self.state[p] for p in mine], mine,
                                                 [offsets[id(p)] for p in mine])
        return PreconditionerOperator(blocks, start)


def _plain_lr(lr):
    """A learning rate as a number: a one-element tensor is read as torch.optim reads it (its value; the step is
    the same in every dtype); a tensor of several elements is refused as torch.optim refuses it."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr: expected a number or a one-element tensor, got a tensor of shape "
                             f"{tuple(lr.shape)}")
        return lr.item()
    return lr


def build_optimizer(
    params: ParamsT,
    preconditioner: str = "adam",
    lr: float = 1e-3,
    regularization: str = "none",
    variable: str = "p",
    strength: float = 0.0,
    policy: str = "all",
    form: Optional[str] = None,
    backend: Optional[str] = None,
    r: Optional[float] = None,
    max_m: Optional[float] = None,
    buffers: Iterable[Tensor] = (),
    model: Optional[torch.nn.Module] = None,
    **hyper,
) -> ComposedOptimizer:
    """Build the composed optimizer.

    Args:
        params: iterable of tensors or torch param-group dicts.
        preconditioner: ``sgd | adagrad | rmsprop | adam`` (diagonal), ``full_matrix | kronecker``
            (:mod:`precond.matrix_preconditioners`), ``bnp`` (docs/theory.md §2), or ``torch_optim`` with
            ``optimizer=<torch.optim class name>`` and ``options={...}`` (:mod:`precond.black_box`).
        lr: learning rate ``η``.
        regularization: ``none | l2 | l1 | gradnorm`` (docs/theory.md §3).
        variable: ``p`` (penalty before the preconditioner) or ``z`` (after it).
        strength: ``λ``; the per-step L2 decay is ``η λ`` (torch convention).
        policy: ``all`` or ``weights`` (only tensors with ``ndim ≥ 2``).
        form: L1 only: ``prox`` (default; exact zeros) or ``subgradient``.
        backend: gradnorm only: ``finite_difference`` (default; one extra
            forward/backward) or ``double_backward`` (graph kept in the step's backward).
        r: gradnorm finite-difference step (default ``λ``).
        max_m: gradnorm in z: ``M`` is capped at this value in the penalty (default
            :data:`precond.regularizers.DEFAULT_MAX_M`), so ``λMH(Mg)`` stays bounded where ``v̂ → 0``.
        buffers: gradnorm finite difference: tensors restored after the extra
            pass (pass ``model.buffers()`` to protect BatchNorm running statistics).
        model: required by ``preconditioner="bnp"`` (its Linear/Conv2d layers get
            forward hooks). BNP's own keys: ``base`` (``sgd | adagrad | rmsprop |
            adam``, default sgd), ``rho`` (0.01), ``bnp_eps`` (1e-3), ``bnp_warmup`` (100),
            ``allow_batchnorm`` (False); other ``hyper`` go to the base step.
        **hyper: torch.optim names: ``betas, eps`` (adam), ``alpha, eps,
            centered, momentum`` (rmsprop), ``lr_decay, eps,
            initial_accumulator_value`` (adagrad), ``momentum, dampening,
            nesterov`` (sgd).

    Example::

        opt = build_optimizer(model.parameters(), "adam", lr=1e-3,
                              regularization="l2", variable="z", strength=1e-2)  # == AdamW
        opt = build_optimizer(model.parameters(), "adam", lr=1e-3, regularization="gradnorm",
                              variable="p", strength=1e-2, backend="finite_difference",
                              buffers=model.buffers())
        opt.step(closure)   # gradnorm needs the closure (zero_grad, forward, backward, return loss)
    """
    lr = _plain_lr(lr)
    spec = preconditioner_settings(preconditioner, lr, hyper)
    reg = RegularizationSpec(name=regularization, variable=variable, strength=strength, policy=policy, form=form,
                             backend=backend, r=r, max_m=max_m)
    check_combinations(preconditioner=spec, regularization=reg)
    bnp_link, bnp_defaults = None, {}
    if isinstance(spec, BNPSettings):
        if model is None:
            raise ValueError("preconditioner 'bnp' needs build_optimizer(..., model=model) to hook its layers")
        check_model_for_bnp(model, spec.allow_batchnorm)
        bnp_link, bnp_defaults = BNPTransform(model), {k: getattr(spec, k) for k in BNPSettings.OWN}
        spec = spec.base_settings()
    elif model is not None:
        raise ValueError("the 'model' argument is only used by preconditioner 'bnp'")
    if isinstance(spec, TorchOptimSettings):
        step_link, hyper = build_black_box(spec, lr), {}
    else:
        link_class = type(spec).LINK or ALL_PRECONDITIONERS[spec.NAME][0]
        step_link, hyper = link_class(), spec.hyper()
    params = _refuse_unknown_group_keys(params, {"lr", *hyper, *bnp_defaults, "strength", "policy"})
    if isinstance(spec, MatrixPreconditionerSettings):
        spec.check_params(_tensors_of(params))
    defaults = {"lr": float(lr), **hyper, **bnp_defaults, "strength": reg.strength, "policy": reg.policy}

    before, after, post = [], [], []
    if reg.name != "none":
        link = make_penalty(reg.name, reg.variable, form=reg.form, backend=reg.backend, r=reg.r, max_m=reg.max_m,
                            buffers=buffers)
        if type(link).after_update is not Link.after_update:
            post.append(link)  # proximal maps act on p after the update, in either variable
        else:
            (before if reg.variable == "p" else after).append(link)
    # sgd, rmsprop and adagrad take heavy-ball momentum as a separate link after the
    # z-regularizers (torch.optim SGD/RMSprop semantics); adam's momentum is its first moment.
    momentum = Momentum() if "momentum" in hyper else None
    if bnp_link is not None:
        before.append(bnp_link)  # after the p-penalties, before the base preconditioner
    optimizer = ComposedOptimizer(params, defaults, step_link, before=before, after=after, momentum=momentum,
                                  post=post)
    if isinstance(step_link, TorchOptimizer):
        step_link.attach(optimizer)
    return optimizer


def _tensors_of(params: list) -> list[Tensor]:
    """Every tensor of a parameter list (tensors or torch param-group dicts; a group's ``params`` is made a list,
    so that reading it here does not exhaust a generator torch reads after)."""
    out = []
    for item in params:
        if isinstance(item, dict):
            group = item["params"]
            item["params"] = [group] if isinstance(group, Tensor) else list(group)
            out += item["params"]
        else:
            out.append(item)
    return out


def _refuse_unknown_group_keys(params: ParamsT, known: set) -> list:
    """Param-group dicts may override the optimizer's own hyperparameters, nothing else
    (torch's ``weight_decay`` is ``regularization="l2"`` here: it must not be silently ignored)."""
    params = list(params)
    for i, group in enumerate(params):
        if isinstance(group, dict):
            unknown = sorted(set(group) - known - {"params"})
            if unknown:
                hint = " (use regularization='l2' with a per-group 'strength')" if "weight_decay" in unknown else ""
                raise ValueError(f"param group {i} has key(s) {unknown} this optimizer does not use; "
                                 f"expected some of {sorted(known)}{hint}")
    return params


def preconditioner_settings(name: str, lr: float, hyper: dict) -> PreconditionerSettings:
    """The typed settings of preconditioner ``name`` from build_optimizer's keywords (the one check)."""
    if name == "bnp":
        return BNPSettings.from_flat(lr, hyper)
    if name == TorchOptimSettings.NAME:
        unknown = sorted(set(hyper) - {"optimizer", "options"})
        if unknown:
            raise ConfigError(unknown[0], "optimizer and options with preconditioner='torch_optim'", hyper[unknown[0]],
                              "pass the optimizer's own keywords in options={...}")
        return TorchOptimSettings.from_mapping({"name": hyper.get("optimizer", "SGD"), "lr": lr,
                                                "options": hyper.get("options", {})})
    if name in MATRIX_PRECONDITIONERS:
        return MATRIX_PRECONDITIONERS[name][1].from_mapping({"name": name, "lr": lr, **hyper})
    if name in PRECONDITIONERS:
        return diagonal_settings(name, lr=lr, **hyper)
    load_extensions()
    cls = settings_class(name)
    if cls is None or cls is BNPSettings:
        loaded = [loaded_cls.NAME for loaded_cls in loaded_settings_classes()]
        known = sorted({*ALL_PRECONDITIONERS, "bnp", "torch_optim", *loaded})
        raise ConfigError("name", f"one of {known}", name)
    return cls.from_mapping({"name": name, "lr": lr, **hyper})


