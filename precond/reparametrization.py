"""The frozen-statistics BatchNorm reparametrization as a block preconditioner ``P`` (docs/theory.md §4).

For a Linear layer ``u = W h + b`` with input mean ``μ`` and variance ``σ²`` per feature, frozen,
BatchNorm's variables ``(W̃, b̃)`` with ``u = W̃ (h − μ)/σ + b̃`` (``σ = √(σ² + ε)``) are

    W = W̃ diag(1/σ),     b = b̃ − W̃ (μ/σ).

So ``p = P z`` with ``P`` block-diagonal over neurons: neuron ``i``'s ``[wᵢ; bᵢ] = Jₗ [w̃ᵢ; b̃ᵢ]``,
``Jₗ = [[diag(1/σ), 0], [−(μ/σ)ᵀ, 1]]``, the same ``(d+1) × (d+1)`` block for every neuron of
layer ``l``. It is not diagonal, so ``κ(PᵀHP)`` needs this dense form. Gradient descent on ``z``
is preconditioned descent on ``p`` with ``M = P Pᵀ``, which is BNP's gradient transform
(:func:`precond.bnp.transform_layer_grads`) when ``μ, σ²`` are the same statistics. The
first layer's block is input standardization.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from precond.invariance import n_params, param_offsets
from precond.normalization import forward_capture

#: BatchNorm's default ε
BN_EPS = 1e-5


def layer_input_moments(model: nn.Module, x: Tensor) -> dict[nn.Linear, tuple[Tensor, Tensor]]:
    """``(μ, σ²)`` (population variance, float64) of the input of every Linear layer over the batch ``x``."""
    moments = {}
    for m, h, _ in forward_capture(model, x, lambda m: isinstance(m, nn.Linear)).values():
        h = h.reshape(-1, m.in_features).double()
        moments[m] = (h.mean(dim=0), h.var(dim=0, unbiased=False))
    return moments


def bn_reparametrization_matrix(model: nn.Module, x: Optional[Tensor], eps: float = BN_EPS,
                                moments: Optional[dict] = None) -> Tensor:
    """Dense ``P`` (n × n, float64) of the reparametrization above for every Linear layer with a bias
    (other parameters: identity), statistics from the batch ``x`` at the model's current weights, or
    the given ``moments`` (``{layer: (μ, σ²)}``, e.g. BNP's running ones: :func:`bnp_moments`)."""
    n, offsets = n_params(model), param_offsets(model)
    p = torch.eye(n, dtype=torch.float64)
    moments = layer_input_moments(model, x) if moments is None else moments
    for layer, (mean, var) in moments.items():
        mean, var = mean.double(), var.double()
        if layer.bias is None or not layer.weight.requires_grad:
            continue
        inv_sigma = (var + eps).rsqrt()
        d_in, w0, b0 = layer.in_features, offsets[id(layer.weight)], offsets[id(layer.bias)]
        for i in range(layer.out_features):
            rows = slice(w0 + i * d_in, w0 + (i + 1) * d_in)
            p[rows, rows] = torch.diag(inv_sigma)
            p[b0 + i, rows] = -mean * inv_sigma  # b = b̃ − Σⱼ w̃ⱼ μⱼ/σⱼ
    return p


def bnp_moments(optimizer, model: nn.Module) -> tuple[dict, float]:
    """BNP's running ``{layer: (μ, σ²)}`` and its ``ε`` from a precond optimizer's state: with them,
    :func:`bn_reparametrization_matrix` is the block ``P`` whose ``PPᵀ`` BNP applies (base step SGD)."""
    moments, eps = {}, None
    for group in optimizer.param_groups:
        eps = group.get("bnp_eps", eps)
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            state = optimizer.state.get(layer.weight, {})
            if "bnp.mean" in state:
                moments[layer] = (state["bnp.mean"], state["bnp.var"])
    if eps is None:
        raise ValueError("bnp_moments needs an optimizer built with preconditioner='bnp'")
    return moments, float(eps)
