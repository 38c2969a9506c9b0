"""Normalization as preconditioning (DESIGN.md §4): input standardization and norm layers.

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
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from precond.data import Dataset

NORMALIZATIONS = ("none", "input", "batchnorm", "layernorm")


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


def norm_layer(kind: str, channels: int, conv: bool) -> nn.Module:
    """The layer placed after a hidden Linear (``conv=False``) or Conv2d (``conv=True``)."""
    if kind in ("none", "input"):
        return nn.Identity()
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels) if conv else nn.BatchNorm1d(channels)
    if kind == "layernorm":
        # GroupNorm with one group normalizes each sample over C×H×W: LayerNorm for feature maps
        return nn.GroupNorm(1, channels) if conv else nn.LayerNorm(channels)
    raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got '{kind}'")
