"""BNP: batch-normalization preconditioning (docs/theory.md §4).

No normalization layer in the model. For every ``nn.Linear`` and ``nn.Conv2d``
(``groups=1``) layer ``u = W h + b``, running statistics of the layer *input*
``h`` are kept per input feature (Linear) or per input channel over batch ×
positions (Conv2d):

    m₁ ← (1−ρ) m₁ + ρ·mean(h),   m₂ ← (1−ρ) m₂ + ρ·mean(h²),   k ← k + 1
    μ = m₁ / (1 − (1−ρ)ᵏ),       σ² = max(m₂ / (1 − (1−ρ)ᵏ) − μ², 0)

and the gradients are transformed before the base step::

    G̃_W = (G_W − g_b μᵀ) · diag(σ² + ε)⁻¹         (Conv2d: per input channel, every kernel position)
    g̃_b = g_b − G̃_W μ                             (Conv2d: sum over channels and kernel positions)

With frozen ``μ, σ`` this is exactly a gradient step on the BatchNorm
reparametrization ``u = W̃ (h − μ)/σ + b̃`` (``W = W̃/σ``, ``b = b̃ − W̃ μ/σ``,
``σ = √(σ² + ε)``) mapped back to ``(W, b)``: the transform is ``J Jᵀ`` of that
reparametrization, so it is a positive semi-definite preconditioner. For
Conv2d with zero padding the correspondence is exact away from the borders
(BatchNorm would pad the *normalized* input with zeros, i.e. ``h`` with ``μ``).

Because ``μ, σ²`` are running averages across steps, BNP works at batch size 1.
The transformed gradient then goes through the base step (SGD with momentum by
default, or adagrad/rmsprop/adam). Parameters of other layers, layers without
bias (only the ``diag(σ² + ε)⁻¹`` scaling is applied), grouped convolutions
and layers without statistics yet are left to the base step unchanged.

Statistics come from forward hooks: every training-mode forward records its
batch moments as *pending*, and each optimizer step first commits the latest
pending moments — those of the forward whose gradient is being applied. Extra
forwards (curvature measurements, the gradnorm finite-difference pass,
evaluation in eval mode) therefore never enter the running averages twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from precond.chain import Link
from precond.errors import ConfigError
from precond.preconditioners import PRECONDITIONERS, PreconditionerSettings, diagonal_settings
from precond.settings import Choice, Flag, Int, Num, Table, Text, setting


def bnp_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear and (ungrouped) Conv2d layers BNP transforms."""
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]


def batch_moments(module: nn.Module, h: Tensor) -> tuple[Tensor, Tensor]:
    """Per input feature (Linear) or channel over batch × positions (Conv2d): ``mean(h)``, ``mean(h²)``."""
    h = h.detach()
    if isinstance(module, nn.Conv2d):
        dims = (0, 2, 3)
    else:
        h = h.reshape(-1, h.shape[-1])
        dims = (0,)
    return h.mean(dim=dims), (h * h).mean(dim=dims)


def transform_layer_grads(module: nn.Module, g_w: Tensor, g_b: Optional[Tensor], mean: Tensor, var: Tensor,
                          eps) -> tuple[Tensor, Optional[Tensor]]:
    """``(G̃_W, g̃_b)`` from ``(G_W, g_b)`` and the input statistics ``μ, σ²`` (see the module docstring).

    The same for a pack of J jobs (:mod:`precond.sweep.pack_training`): every tensor then carries a
    leading job axis (``G_W`` ``[J, O, F]``, ``μ`` ``[J, F]``) and ``eps`` may be one value per job.
    """
    conv = isinstance(module, nn.Conv2d)
    lead = tuple(mean.shape[:-1])  # () for one run, (J,) for a pack
    shape = lead + ((1, -1, 1, 1) if conv else (1, -1))
    if isinstance(eps, Tensor):
        eps = eps.view(*lead, *([1] * (len(shape) - len(lead))))
    inv = (var.view(shape) + eps).reciprocal()
    if g_b is None:
        return g_w * inv, None
    mu = mean.view(shape)
    g_w_new = (g_w - g_b.view(g_b.shape + (1,) * (g_w.ndim - g_b.ndim)) * mu) * inv
    g_b_new = g_b - (g_w_new * mu).sum(dim=tuple(range(g_b.ndim, g_w.ndim)))
    return g_w_new, g_b_new


class BNPTransform(Link):
    """The BNP gradient transform, placed after the p-regularizers and before the base preconditioner.

    Hyperparameters (per param group): ``rho`` (rate of the running averages),
    ``bnp_eps`` (ε) and ``bnp_warmup`` (steps that only collect statistics: the
    first estimates come from a handful of samples at small batch sizes, and an
    underestimated ``σ²`` makes a huge step). State per layer weight: ``bnp.m1``, ``bnp.m2``,
    ``bnp.count`` (raw) and ``bnp.mean``, ``bnp.var`` (bias-corrected).
    """

    namespace = "bnp"

    def __init__(self, model: nn.Module):
        layers = bnp_layers(model)
        #: (layer, weight, bias): the layer says Linear or Conv2d; weight and bias are what the optimizer steps
        self.entries: list[tuple[nn.Module, Tensor, Optional[Tensor]]] = [(m, m.weight, m.bias) for m in layers]
        self._pending: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        for layer in layers:  # the hooks live as long as the model
            layer.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args) -> None:
        if module.training:
            self._pending[module] = batch_moments(module, args[0])

    def take_pending(self, layer: nn.Module) -> Optional[tuple[Tensor, Tensor]]:
        """The latest batch moments of ``layer`` not yet committed (None when there are none)."""
        return self._pending.pop(layer, None)

    def for_pack(self, layout) -> Link:
        return PackedBNPTransform(layout)

    def begin_step(self, optimizer) -> None:
        """Commit the latest pending batch moments of each layer into its running statistics."""
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        for layer, weight, _ in self.entries:
            moments = self.take_pending(layer)
            group = groups.get(id(weight))
            if moments is None or group is None:
                continue
            m1_batch, m2_batch = moments
            state = optimizer.state[weight]
            rho = _per_row(group["rho"], m1_batch)
            if self.key("m1") not in state:
                state[self.key("m1")] = torch.zeros_like(m1_batch)
                state[self.key("m2")] = torch.zeros_like(m2_batch)
                state[self.key("count")] = 0
            m1, m2 = state[self.key("m1")], state[self.key("m2")]
            if isinstance(rho, Tensor):  # one rate per job of a pack
                m1.mul_(1 - rho).add_(m1_batch * rho)
                m2.mul_(1 - rho).add_(m2_batch * rho)
            else:
                m1.mul_(1 - rho).add_(m1_batch, alpha=rho)
                m2.mul_(1 - rho).add_(m2_batch, alpha=rho)
            state[self.key("count")] += 1
            correction = 1 - (1 - rho) ** state[self.key("count")]
            state[self.key("mean")] = m1 / correction
            state[self.key("var")] = (m2 / correction - state[self.key("mean")] ** 2).clamp_(min=0)

    def transform(self, ctxs, directions):
        out = [list(d) for d in directions]
        where = {id(p): (c, i) for c, ctx in enumerate(ctxs) for i, p in enumerate(ctx.params)}
        for layer, weight, bias in self.entries:
            w_at = where.get(id(weight))
            if w_at is None:
                continue
            c, i = w_at
            state, group = ctxs[c].states[i], ctxs[c].group
            if self.key("mean") not in state:
                continue
            past_warmup = state[self.key("count")] >= group["bnp_warmup"]  # a bool, or one per job in a pack
            if not bool(past_warmup.any()) if isinstance(past_warmup, Tensor) else not past_warmup:
                continue
            b_at = where.get(id(bias)) if bias is not None else None
            g_b = out[b_at[0]][b_at[1]] if b_at is not None else None
            g_w, g_b_new = transform_layer_grads(layer, out[c][i], g_b, state[self.key("mean")],
                                                 state[self.key("var")], group["bnp_eps"])
            if isinstance(past_warmup, Tensor) and not bool(past_warmup.all()):  # jobs still in their warm-up
                g_w = torch.where(past_warmup.view(-1, *[1] * (g_w.ndim - 1)), g_w, out[c][i])
                g_b_new = None if g_b is None else torch.where(past_warmup.view(-1, *[1] * (g_b.ndim - 1)),
                                                               g_b_new, g_b)
            out[c][i] = g_w
            if b_at is not None:
                out[b_at[0]][b_at[1]] = g_b_new
        return out


def _per_row(value, like: Tensor):
    """A hyperparameter as a number, or (one per job in a pack) a column ``[J, 1]`` against ``[J, F]``."""
    return value.view(-1, *[1] * (like.ndim - 1)) if isinstance(value, Tensor) else value


class PackedBNPTransform(BNPTransform):
    """BNP for jobs ``start … stop-1`` of a pack (:mod:`precond.sweep.pack_training`): the same
    arithmetic on stacked tensors, every statistic ``[J, F]`` the jobs' own. The stacked model
    records each training forward's input moments per job (``StackedModel.moments``) in place of
    the hooks of a model alone."""

    def __init__(self, layout):
        self.moments, self.start, self.stop = layout.moments, layout.start, layout.stop
        views = dict(zip(layout.names, layout.views))
        self.entries = [(m, views[f"{name}.weight"], views.get(f"{name}.bias") if m.bias is not None else None)
                        for name, m in layout.base.named_modules()
                        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]
        self._names = {id(m): name for name, m in layout.base.named_modules()}

    def take_pending(self, layer: nn.Module) -> Optional[tuple[Tensor, Tensor]]:
        moments = self.moments.get(self._names[id(layer)])
        return None if moments is None else tuple(m[self.start:self.stop] for m in moments)


def check_model_for_bnp(model: nn.Module, allow_batchnorm: bool) -> None:
    """BNP replaces BatchNorm: refuse a model that already has BatchNorm layers unless allowed."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and not allow_batchnorm:
        raise ConfigError("/normalization", "a model without BatchNorm layers with preconditioner=bnp, which "
                          "replaces BatchNorm", "a model that has BatchNorm layers",
                          "use normalization=none (or set preconditioner.allow_batchnorm=true to combine them)")
    if not bnp_layers(model):
        raise ValueError("preconditioner 'bnp' found no Linear or Conv2d layer to precondition")


@dataclass(frozen=True)
class BNPSettings(PreconditionerSettings):
    """BNP's own settings and its base step (a diagonal preconditioner with ``base_hyper``).

    ``rho`` is the rate of the running moments (≈ 1/rho batches), ``bnp_eps`` the ε of
    ``diag(σ² + ε)⁻¹``, ``bnp_warmup`` the steps that only collect statistics before the
    transform applies, ``allow_batchnorm`` lets BNP run on a model that has BatchNorm layers.
    """

    NAME: ClassVar[str] = "bnp"
    name: str = setting(Text(), "bnp")
    base: str = setting(Choice(tuple(sorted(PRECONDITIONERS))), "sgd",
                        doc="the step applied to the transformed gradient")
    base_hyper: dict = setting(Table(), None, doc="torch.optim hyperparameters of the base step")
    rho: float = setting(Num(0, 1, lo_open=True), 0.01)
    bnp_eps: float = setting(Num(0, lo_open=True), 1e-3)
    bnp_warmup: int = setting(Int(lo=0), 100)
    allow_batchnorm: bool = setting(Flag(), False)

    #: BNP's own keys, held in every param group (the rest of a flat hyper dict belongs to the base step)
    OWN: ClassVar[tuple[str, ...]] = ("rho", "bnp_eps", "bnp_warmup")

    def __post_init__(self) -> None:
        if self.base_hyper is None:
            object.__setattr__(self, "base_hyper", {})
        super().__post_init__()

    def check(self) -> None:
        super().check()
        self.base_settings()

    def base_settings(self) -> PreconditionerSettings:
        """The base step's settings; an error names ``base_hyper.<key>``."""
        try:
            return diagonal_settings(self.base, lr=self.lr, **self.base_hyper)
        except ConfigError as err:
            raise err.within("base_hyper") from None

    def part(self, key: str):
        return self.base_settings() if key == "base_hyper" else super().part(key)

    def hyper(self) -> dict:
        """Flat keyword arguments of :func:`precond.build_optimizer`: the base step's and BNP's own."""
        return {**self.base_settings().hyper(), "base": self.base, "allow_batchnorm": self.allow_batchnorm,
                **{k: getattr(self, k) for k in self.OWN}}

    @classmethod
    def from_flat(cls, lr: float, hyper: dict) -> BNPSettings:
        """From build_optimizer's flat keywords: BNP's fields by name, everything else to the base step."""
        own = {k: v for k, v in hyper.items() if k in cls.keys()}
        rest = {k: v for k, v in hyper.items() if k not in own}
        return cls.from_mapping({"name": "bnp", "lr": lr, **own, "base_hyper": {**own.get("base_hyper", {}), **rest}})
