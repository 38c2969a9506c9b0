"""Normalization as preconditioning (docs/theory.md §4): input standardization and norm layers.

For a linear layer ``u = W h + b`` the Hessian block of one neuron is
``(1/N) Ĥᵀ Dᵢ Ĥ`` with ``Ĥ = [h 1]`` the extended hidden-variable matrix, so
``κ(block) ≤ κ(Dᵢ) κ(ĤᵀĤ)``. Standardizing ``h`` (centre, unit variance)
turns ``ĤᵀĤ/N`` into ``diag(corr(h), 1)``:

* ``input``: the data are standardized per input coordinate with train-split
  statistics (the first layer's ``h`` is the input);
* ``batchnorm``: hidden pre-activations are standardized with batch statistics;
* ``layernorm``: each sample's hidden vector is centred and scaled (over
  features, or over C×H×W for convolutional maps).

Placement (models.py): every hidden Linear/Conv is followed by the norm layer,
then the activation: ``Linear → Norm → act``. The output layer has none.

Measuring the effect: :func:`hidden_matrix_kappas` gives ``κ(ĤᵀĤ)`` of every
Linear layer's extended input, and ``κ⁺ = λmax/λmin⁺`` over the non-null
spectrum (LayerNorm makes ``[1; 0]`` a null vector of the next layer's ``Ĥ``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from precond.data import Dataset
from precond.hessian import measurement_mode
from precond.settings import Choice, Flag, Settings, setting
from precond.spectrum import kappa_plus_of

NORMALIZATIONS = ("none", "input", "batchnorm", "layernorm")


@dataclass(frozen=True)
class Normalization(Settings):
    """The ``normalization`` config group: ``name`` is one of ``NORMALIZATIONS``.

    ``standardize_inputs`` adds input standardization to any choice (``name=input`` implies it): a
    comparison of BatchNorm, no normalization and BNP is only fair when every arm sees the same
    inputs, because BNP standardizes its first layer's input as part of its transform.
    """

    name: str = setting(Choice(NORMALIZATIONS), "none")
    standardize_inputs: bool = setting(Flag(), False)

    @property
    def standardizes_inputs(self) -> bool:
        return self.name == "input" or self.standardize_inputs


def standardize_inputs(data: Dataset, eps: float = 1e-8) -> Dataset:
    """``x ← (x − μ)/σ`` per input coordinate, ``μ, σ`` from the train split only.

    Coordinates with ``σ < eps`` (constant pixels) are only centred, not scaled.
    """
    mean = data.x_train.mean(dim=0, keepdim=True)
    std = data.x_train.std(dim=0, keepdim=True)
    std = torch.where(std < eps, torch.ones_like(std), std)

    def apply(x):
        return None if x is None else (x - mean) / std

    return replace(data, x_train=apply(data.x_train), x_val=apply(data.x_val), x_test=apply(data.x_test))


def norm_layer(kind: str, channels: int, conv: bool, affine: bool = True) -> nn.Module:
    """The layer placed after a hidden Linear (``conv=False``) or Conv2d (``conv=True``); ``affine=False``: no
    learnable ``γ, β`` (LayerNorm's output then sums to zero over features, exactly)."""
    kind = Normalization(name=kind).name
    if kind in ("none", "input"):
        return nn.Identity()
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels, affine=affine) if conv else nn.BatchNorm1d(channels, affine=affine)
    if kind == "layernorm":
        # GroupNorm with one group normalizes each sample over C×H×W: LayerNorm for feature maps
        return nn.GroupNorm(1, channels, affine=affine) if conv else nn.LayerNorm(channels, elementwise_affine=affine)


def forward_capture(model: nn.Module, inputs: Tensor, select, bn_mode: str = "train") -> dict[str, tuple]:
    """``{name: (module, input, output)}`` (detached) of every module with ``select(module)`` in one
    no-grad forward of ``inputs`` in ``bn_mode`` (buffers restored, hooks removed afterwards)."""
    captured: dict[str, tuple] = {}
    hooks = [module.register_forward_hook(
        lambda m, args, out, name=name: captured.__setitem__(name, (m, args[0].detach(), out.detach())))
        for name, module in model.named_modules() if select(module)]
    try:
        with torch.no_grad(), measurement_mode(model, bn_mode):
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return captured


def hidden_matrix_kappas(model: nn.Module, inputs: Tensor, rel_tol: float = 1e-10,
                         max_features: int = 4096, bn_mode: str = "train") -> dict[str, dict]:
    """``κ(ĤᵀĤ)`` and ``κ⁺`` of ``Ĥ = [h 1]`` for the input ``h`` of every Linear layer.

    ``h`` is flattened to ``N × d``; eigenvalues of ``ĤᵀĤ/N`` in float64. ``κ⁺`` uses the
    smallest eigenvalue above ``rel_tol·λmax`` (a null vector, e.g. ``[1; 0]`` when the rows
    of ``h`` are centred, is left out). Layers wider than ``max_features`` are skipped.
    """
    captured = {name: inp for name, (_, inp, _) in forward_capture(
        model, inputs, lambda m: isinstance(m, nn.Linear) and m.in_features <= max_features, bn_mode).items()}
    out = {}
    for name, h in captured.items():
        h = h.reshape(h.shape[0], -1).double()
        ext = torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)], dim=1)
        eig = torch.linalg.eigvalsh(ext.T @ ext / h.shape[0])
        lam_max = float(eig[-1])
        kappa = lam_max / float(eig[0]) if float(eig[0]) > rel_tol * lam_max else None
        out[name] = {"kappa_hidden": kappa, "kappa_hidden_plus": kappa_plus_of(eig, rel_tol)[0]}
    return out


def extended_gram_kappas(x: Tensor, rtol: float = 1e-10) -> dict:
    """Conditioning of the first layer's input before and after input standardization (float64).

    ``G = [X 1]ᵀ[X 1]/N`` is the Hessian of least squares on ``X`` (up to the factor 2 of MSE).
    After standardization (zero mean, unit variance per non-constant feature; constant features
    are only centred, so they become zero columns), ``G = blockdiag(C, 1)`` with ``C`` the
    correlation matrix of the non-constant features, so ``κ⁺(G_std) = κ⁺(blockdiag(C, 1))``.
    Returns ``kappa_raw``, ``kappa_standardized`` and ``kappa_correlation`` (κ⁺ over the non-null
    spectrum, ``|λ| > rtol·λmax``) and the number of constant features.
    """
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    n = x.shape[0]

    def gram(m: Tensor) -> Tensor:
        ext = torch.cat([m, torch.ones(n, 1, dtype=m.dtype)], dim=1)
        return ext.T @ ext / n

    def kappa_plus(m: Tensor) -> float:
        return kappa_plus_of(torch.linalg.eigvalsh(m), rtol)[0]

    std = x.std(dim=0, unbiased=False)
    varying = std > 1e-12
    z = (x[:, varying] - x[:, varying].mean(dim=0)) / std[varying]
    standardized = torch.zeros_like(x)
    standardized[:, varying] = z
    correlation = z.T @ z / n
    block = torch.block_diag(correlation, torch.ones(1, 1, dtype=x.dtype))
    return {"kappa_raw": kappa_plus(gram(x)), "kappa_standardized": kappa_plus(gram(standardized)),
            "kappa_correlation": kappa_plus(block), "constant_features": int((~varying).sum())}


def relu_activity(model: nn.Module, inputs: Tensor, rare: float = 0.01, bn_mode: str = "train") -> dict[str, dict]:
    """Per ReLU layer: units never active on ``inputs`` (dead: their incoming weights get no gradient and
    no curvature, so they are exact null directions of H and of the GGN), and units active on fewer than
    ``rare`` of the samples (near-null columns of the next layer's ``Ĥ``)."""
    captured = {name: out for name, (_, _, out) in forward_capture(
        model, inputs, lambda m: isinstance(m, nn.ReLU), bn_mode).items()}
    out = {}
    for name, act in captured.items():
        active = (act.reshape(act.shape[0], -1) > 0).double().mean(dim=0)
        out[name] = {"units": int(active.numel()), "dead": int((active == 0).sum()),
                     "rare": int(((active > 0) & (active < rare)).sum())}
    return out
