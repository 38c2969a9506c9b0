"""Any ``torch.optim.Optimizer`` as the preconditioner of a chain: ``preconditioner=torch_optim``.

The optimizer is a black box: precond does not know its ``P``. It still trains, is tuned, compared, packed
with nothing (it trains alone), checkpointed and resumed, and every metric except the z-space ones is
recorded. Inside the chain (docs/theory.md §6) it takes the place of the preconditioner: the p-penalties
run before it on the gradient it sees, and its own step becomes the direction ``d`` with
``p_new = p − η d`` (``d = (p − p_step)/η``, so the parameters follow the optimizer's own step to round-off).
Links that would act after it (penalties in z, the L1 prox) need ``P`` and are refused, and so is a claim
on its κ in z.

Which optimizers can be named: every ``torch.optim.Optimizer`` subclass in ``torch.optim`` that steps
without a closure on dense gradients, and those that installed packages register under the entry-point
group ``precond.optimizers`` (:mod:`precond.extensions`). The list is closed and known when a config is
checked; an unknown name is refused with the installed options.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch

from precond.errors import ConfigError
from precond.extensions import registered_optimizers
from precond.preconditioners import Preconditioner, PreconditionerSettings
from precond.settings import Table, Text, setting

#: torch.optim optimizers that cannot be a link: LBFGS re-evaluates a closure inside its step, SparseAdam
#: needs sparse gradients
UNSUPPORTED = {"LBFGS": "its step re-evaluates a closure many times", "SparseAdam": "it needs sparse gradients"}


def torch_optimizers() -> dict[str, type]:
    """Every optimizer ``preconditioner=torch_optim`` may name: torch.optim's and the registered ones."""
    found = {name: cls for name, cls in vars(torch.optim).items()
             if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
             and name not in UNSUPPORTED}
    found.update(registered_optimizers())
    return dict(sorted(found.items()))


class TorchOptimizer(Preconditioner):
    """The link around an inner ``torch.optim`` optimizer over the same parameters and state."""

    namespace = "torch_optim"
    diagonal = False
    exposes_P = False

    def __init__(self, optimizer_class: type, options: dict):
        self.optimizer_class, self.options = optimizer_class, dict(options)
        self.inner = None

    def attach(self, optimizer) -> None:
        """Build the inner optimizer over the outer one's param groups (its own checks of the parameters run
        here, before any step: Muon, for one, takes only matrices)."""
        groups = [{"params": g["params"], "lr": g["lr"]} for g in optimizer.param_groups]
        try:
            self.inner = self.optimizer_class(groups, **self.options)
        except (TypeError, ValueError) as err:
            raise ConfigError("preconditioner.name", "an optimizer that takes this model's parameters",
                              self.optimizer_class.__name__, str(err).split("\n")[0]) from None
        self.inner.state = optimizer.state

    def begin_step(self, optimizer) -> None:
        if self.inner is None:
            self.attach(optimizer)
        # one state for both: the inner optimizer's entries (unprefixed, as torch names them) live in the
        # outer optimizer's state, so state_dict()/load_state_dict() carry them through a checkpoint
        self.inner.state = optimizer.state

    def transform(self, ctxs, directions):
        params = [p for ctx in ctxs for p in ctx.params]
        grads = [p.grad for p in params]
        before = [p.detach().clone() for p in params]
        for inner_group, ctx in zip(self.inner.param_groups, ctxs):
            inner_group["lr"] = ctx.group["lr"]  # a schedule sets the outer lr
        for p, g in zip(params, (g for d in directions for g in d)):
            p.grad = g
        self.inner.step()
        out, i = [], 0
        for ctx in ctxs:
            lr = ctx.group["lr"]
            ds = []
            for _ in ctx.params:
                p = params[i]
                ds.append((before[i] - p.detach()) / lr if lr != 0 else torch.zeros_like(p))
                p.detach().copy_(before[i])
                p.grad = grads[i]
                i += 1
            out.append(ds)
        return out

    def blocks(self, group, states, params, starts):
        raise NotImplementedError(f"preconditioner torch_optim ({self.optimizer_class.__name__}) is a black box: "
                                  "it exposes no P, so nothing in z can be measured")


@dataclass(frozen=True)
class TorchOptimSettings(PreconditionerSettings):
    """A ``torch.optim`` optimizer by class name (``name``) with its keyword arguments (``options``)."""

    NAME: ClassVar[str] = "torch_optim"
    DIAGONAL: ClassVar[bool] = False
    EXPOSES_P: ClassVar[bool] = False
    name: str = setting(Text(min_len=1), "SGD", doc="a torch.optim optimizer class name, e.g. NAdam")
    options: dict = setting(Table(), None, doc="its keyword arguments besides lr, e.g. {betas: [0.9, 0.99]}")

    def __post_init__(self) -> None:
        if self.options is None:
            object.__setattr__(self, "options", {})
        super().__post_init__()

    def check(self) -> None:
        known = torch_optimizers()
        if self.name not in known:
            why = f" ({UNSUPPORTED[self.name]})" if self.name in UNSUPPORTED else ""
            raise ConfigError("name", f"one of the installed optimizers {sorted(known)}", self.name,
                              f"a torch.optim class name{why}")
        if "lr" in self.options or "params" in self.options:
            raise ConfigError("options", "keyword arguments besides lr and params", dict(self.options),
                              "set the learning rate with lr=")
        accepted = inspect.signature(known[self.name]).parameters
        unknown = sorted(k for k in self.options if k not in accepted)
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
            raise ConfigError(f"options.{unknown[0]}", f"a keyword of torch.optim.{self.name} "
                              f"({', '.join(k for k in accepted if k not in ('params', 'lr'))})", unknown[0])

    def optimizer_class(self) -> type:
        return torch_optimizers()[self.name]

    def hyper(self) -> dict:
        """build_optimizer's keywords: the class name and its options."""
        return {"optimizer": self.name, "options": dict(self.options)}


def build_black_box(spec: TorchOptimSettings, lr: float) -> TorchOptimizer:
    """The link of ``spec``; the optimizer's own check of its options runs now (on a probe parameter), so a value
    it refuses is one line before any training."""
    link = TorchOptimizer(spec.optimizer_class(), spec.options)
    try:
        link.optimizer_class([torch.zeros(2, 2, requires_grad=True)], lr=lr, **spec.options)
    except (TypeError, ValueError) as err:
        raise ConfigError("preconditioner.options", f"options torch.optim.{spec.name} accepts", dict(spec.options),
                          str(err).split("\n")[0]) from None
    return link
