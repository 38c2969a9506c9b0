"""Exact invariances of a network, written down analytically, and the spectrum with them projected out.

A direction ``v`` in parameter space is an *invariance* when the network's outputs (or the loss)
do not change along it. Then ``∇L ⊥ v`` everywhere, ``v`` is a null vector of the GGN everywhere
(``Jv = 0``), and of ``H`` wherever it is a *translation* invariance (the loss is constant on the
whole line ``p + tv``). These null directions exist at every point, in every network that has
them, so they say nothing about conditioning: κ⁺ is measured on their orthogonal complement
(:func:`projected_eigenvalues`), not by thresholding small eigenvalues.

Translation invariances (:func:`translation_invariances`), for ``Sequential`` MLPs:

* **softmax shift**: adding one vector ``u`` to every row of the output layer ``W`` and one
  constant to every entry of its bias shifts all logits equally (``d + 1`` directions);
* **bias before BatchNorm**: BN subtracts the batch mean of every pre-activation, so each bias
  entry of the Linear before it is free (``width`` directions);
* **shift before LayerNorm**: LN subtracts each sample's mean over features, so the same
  common-row shift as the softmax's is free (``d + 1`` directions);
* **after LayerNorm with no activation in between**: LN's output ``h = γ⊙x̂ + β`` has
  ``Σ_j x̂_j = 0``, so ``Ĥc = 0`` for ``c = [1/γ; −Σ_j β_j/γ_j]`` and every neuron of the next
  Linear is free along ``c`` (``width`` directions). Only without learnable ``γ, β`` (``c = [1; 0]``)
  is this a translation of the whole parameter space: with them, ``c`` moves when ``γ, β`` do, so
  ``Hc ≠ 0`` although the loss is constant along the line.

Scale invariances (:func:`scale_invariances`) are not translations: ``L(cw) = L(w)`` for ``c > 0``
(``w`` a block of coordinates, the rest fixed) gives ``∇_w L·w = 0`` and, differentiating,
``Hw = −∇_w L`` (the gradient's block on ``w``'s coordinates). So ``w`` is a null vector of ``H`` only at a
critical point, and ``wᵀHw = 0`` everywhere (an identity, never evidence). The norm layers' ``ε``
(``σ² + ε``) makes all of this approximate, to ``O(ε/σ²)``. Per neuron before
BatchNorm the weight row ``wᵢ`` is one (BN removes the bias and the scale of ``wᵢ·h``); before
LayerNorm only the whole layer ``(W, b)`` is.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from precond.spectrum import kappa_plus_of

#: modules that pass a vector through unchanged in shape and carry no parameters of interest here
_PASS = (nn.Identity, nn.Flatten, nn.Dropout)


@dataclass
class Directions:
    """A labelled family of directions (columns of ``vectors``, n × m) in the flat parameter space."""

    label: str
    vectors: Tensor


def param_offsets(model: nn.Module) -> dict[int, int]:
    """``id(param) → offset`` of each trainable parameter in the flat vector ``cat(p.reshape(-1))``."""
    out, start = {}, 0
    for p in model.parameters():
        if p.requires_grad:
            out[id(p)] = start
            start += p.numel()
    return out


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _layers(model: nn.Module) -> list[nn.Module]:
    """The leaf modules of a ``Sequential`` model in order, pass-through modules dropped."""
    if not isinstance(model, nn.Sequential):
        raise TypeError("analytic invariances are written for nn.Sequential MLPs (Linear, norm and activation layers)")
    return [m for m in model if not isinstance(m, _PASS)]


def _column(model: nn.Module, entries: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """One flat float64 direction from ``(param, value tensor shaped like param)`` pairs."""
    offsets, v = param_offsets(model), torch.zeros(n_params(model), dtype=torch.float64)
    for param, value in entries:
        v[offsets[id(param)]:offsets[id(param)] + param.numel()] = value.reshape(-1).double()
    return v


def _common_row_shifts(model: nn.Module, linear: nn.Linear) -> Tensor:
    """``dW[:, j] = 1`` for each input ``j``, and ``db = 1``: a shift common to every output (d + 1 columns)."""
    cols = []
    for j in range(linear.in_features):
        dw = torch.zeros_like(linear.weight, dtype=torch.float64)
        dw[:, j] = 1.0
        cols.append(_column(model, [(linear.weight, dw)]))
    if linear.bias is not None:
        cols.append(_column(model, [(linear.bias, torch.ones_like(linear.bias, dtype=torch.float64))]))
    return torch.stack(cols, dim=1)


def translation_invariances(model: nn.Module, softmax_output: bool) -> list[Directions]:
    """Every translation invariance above that the model has (``softmax_output``: the loss is cross-entropy)."""
    layers = _layers(model)
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    out = []
    for i, m in enumerate(layers):
        if not isinstance(m, nn.Linear):
            continue
        after = layers[i + 1] if i + 1 < len(layers) else None
        before = layers[i - 1] if i > 0 else None
        if isinstance(after, nn.BatchNorm1d) and m.bias is not None:
            eye = torch.eye(m.out_features, dtype=torch.float64)
            out.append(Directions(f"bias before BatchNorm ({m.out_features})",
                                  torch.stack([_column(model, [(m.bias, e)]) for e in eye], dim=1)))
        if isinstance(after, nn.LayerNorm):
            out.append(Directions(f"common shift before LayerNorm ({m.in_features + 1})", _common_row_shifts(model, m)))
        if isinstance(before, nn.LayerNorm) and m.bias is not None and not before.elementwise_affine:
            out.append(Directions(f"null vector of LayerNorm's output ({m.out_features})",
                                  _after_layernorm(model, before, m)))
    if softmax_output and linears:
        last = linears[-1]
        out.append(Directions(f"softmax shift ({last.in_features + 1})", _common_row_shifts(model, last)))
    return out


def _after_layernorm(model: nn.Module, norm: nn.LayerNorm, linear: nn.Linear) -> Tensor:
    """Per neuron ``i`` of ``linear`` (after a LayerNorm without ``γ, β``): ``wᵢ += 1``, which ``Ĥ`` maps to 0."""
    cols = []
    for i in range(linear.out_features):
        dw = torch.zeros_like(linear.weight, dtype=torch.float64)
        dw[i] = 1.0
        cols.append(_column(model, [(linear.weight, dw)]))
    return torch.stack(cols, dim=1)


def weight_rows(model: nn.Module, linear: nn.Linear) -> Tensor:
    """Each neuron's weight row ``wᵢ`` of ``linear`` as a flat direction (n × out_features)."""
    cols = []
    for r in range(linear.out_features):
        dw = torch.zeros_like(linear.weight, dtype=torch.float64)
        dw[r] = linear.weight.detach()[r].double()
        cols.append(_column(model, [(linear.weight, dw)]))
    return torch.stack(cols, dim=1)


def scale_invariances(model: nn.Module) -> list[Directions]:
    """Per neuron the weight row ``wᵢ`` of each Linear before BatchNorm; per layer ``(W, b)`` before LayerNorm
    (directly, or through a ReLU, which is positively homogeneous)."""
    layers, out = _layers(model), []
    for i, m in enumerate(layers[:-1]):
        if not isinstance(m, nn.Linear):
            continue
        relu_then_ln = isinstance(layers[i + 1], nn.ReLU) and i + 2 < len(layers) and \
            isinstance(layers[i + 2], nn.LayerNorm)
        if isinstance(layers[i + 1], nn.BatchNorm1d):
            out.append(Directions(f"weight rows before BatchNorm ({m.out_features})", weight_rows(model, m)))
        if isinstance(layers[i + 1], nn.LayerNorm) or relu_then_ln:
            entries = [(m.weight, m.weight.detach())] + ([(m.bias, m.bias.detach())] if m.bias is not None else [])
            out.append(Directions("whole layer before LayerNorm (1)", _column(model, entries)[:, None]))
    return out


def relu_rescalings(model: nn.Module) -> list[Directions]:
    """ReLU's positive homogeneity: per hidden unit ``i``, scaling what feeds the ReLU (``wᵢ, bᵢ`` of the Linear,
    or ``γᵢ, βᵢ`` of an affine norm layer just before it) by ``c`` and the next Linear's column ``aᵢ`` by ``1/c``
    leaves the outputs unchanged: the direction ``(θᵢ, −aᵢ)``. Not when a LayerNorm follows the ReLU (it mixes
    units); that case is a whole-layer scale invariance."""
    layers, out = _layers(model), []
    for i, m in enumerate(layers):
        if not isinstance(m, nn.ReLU) or i == 0 or i + 1 >= len(layers) or not isinstance(layers[i + 1], nn.Linear):
            continue
        feed, nxt = layers[i - 1], layers[i + 1]
        if isinstance(feed, (nn.BatchNorm1d, nn.LayerNorm)):
            if getattr(feed, "weight", None) is None:
                continue  # no per-unit parameter to scale (the Linear before it is a scale invariance already)
            params = [feed.weight, feed.bias]
        elif isinstance(feed, nn.Linear):
            params = [feed.weight] + ([feed.bias] if feed.bias is not None else [])
        else:
            continue
        cols = []
        for unit in range(nxt.in_features):
            entries = []
            for q in params:
                d = torch.zeros_like(q, dtype=torch.float64)
                d[unit] = q.detach()[unit].double()
                entries.append((q, d))
            a = torch.zeros_like(nxt.weight, dtype=torch.float64)
            a[:, unit] = -nxt.weight.detach()[:, unit].double()
            cols.append(_column(model, [*entries, (nxt.weight, a)]))
        out.append(Directions(f"ReLU rescaling ({nxt.in_features})", torch.stack(cols, dim=1)))
    return out


def stack(families: Sequence[Directions], n: int) -> Tensor:
    """All families' columns side by side (n × m; n × 0 when there are none)."""
    return torch.cat([f.vectors for f in families], dim=1) if families else torch.zeros(n, 0, dtype=torch.float64)


def complement_basis(directions: Tensor, rtol: float = 1e-10) -> Tensor:
    """An orthonormal basis (n × (n − r)) of the orthogonal complement of ``span(directions)``, r its rank."""
    n = directions.shape[0]
    if directions.shape[1] == 0:
        return torch.eye(n, dtype=torch.float64)
    u, s, _ = torch.linalg.svd(directions.double(), full_matrices=True)
    rank = int((s > rtol * s[0]).sum())
    return u[:, rank:]


def projected_eigenvalues(matrix: Tensor, directions: Tensor) -> Tensor:
    """Eigenvalues of ``matrix`` restricted to the orthogonal complement of ``directions`` (``QᵀMQ``), ascending."""
    q = complement_basis(directions)
    return torch.linalg.eigvalsh(q.T @ matrix.double() @ q)


def null_residuals(matrix: Tensor, directions: Tensor) -> Tensor:
    """``‖M v‖ / (‖v‖ · λmax(M))`` for every column ``v``: 0 for an exact null vector, O(1) for a stiff one."""
    lam_max = float(torch.linalg.eigvalsh(matrix.double())[-1])
    mv = matrix.double() @ directions.double()
    return mv.norm(dim=0) / (directions.double().norm(dim=0).clamp_min(1e-300) * max(lam_max, 1e-300))


def projected_kappa_plus(matrix: Tensor, directions: Tensor) -> dict:
    """κ⁺ of ``matrix`` on the complement of ``directions`` (None when indefinite there), the eigenvalues left
    at ``|λ| ≤ NULL_RTOL·λmax`` (null directions no analytic invariance explains, e.g. dead units), and
    ``λmin/λmax`` there."""
    eig = projected_eigenvalues(matrix, directions)
    kappa_plus, null_dim = kappa_plus_of(eig)
    return {"kappa_plus": kappa_plus, "residual_null": null_dim, "lam_min_ratio": float(eig[0] / eig[-1]),
            "lam_max": float(eig[-1])}
