"""The per-neuron Hessian block of a Linear layer and its bound by the hidden-variable matrix (docs/theory.md §4).

Neuron ``i`` of ``u = W h + b`` sees its parameters ``θᵢ = [wᵢ; bᵢ]`` only through ``u_{n,i} = ĥ_nᵀθᵢ``
(``ĥ = [h; 1]``), so its diagonal block of the GGN is

    Gᵢ = Σ_n D_{n,i} ĥ_n ĥ_nᵀ = Ĥᵀ Dᵢ Ĥ,     D_{n,i} = (∂F_n/∂u_{n,i})ᵀ H_ℓ,n (∂F_n/∂u_{n,i}) ≥ 0,

when samples do not interact (no BatchNorm after the layer). Rayleigh quotients then give
``κ(Gᵢ) ≤ κ(Dᵢ) κ(ĤᵀĤ)``: a theorem (checked here as an identity, never counted as evidence), and the
reason normalizing ``h`` (lowering ``κ(ĤᵀĤ)``) bounds every neuron's conditioning. ``κ(Dᵢ) = ∞`` (a ReLU
unit off on some sample) makes the bound vacuous; those neurons are counted, not checked.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from precond.ggn import output_loss_hessian_blocks
from precond.invariance import param_offsets


def condition_number(eigenvalues: Tensor) -> float:
    """``λmax/λmin`` of a PSD matrix from its ascending eigenvalues; ∞ when ``λmin ≤ n·ε·λmax`` (ε the dtype's
    machine epsilon): below that the computed λmin is rounding, and a "finite" κ of 1e16 would be noise that a
    bound then compares against."""
    lam_min, lam_max = float(eigenvalues[0]), float(eigenvalues[-1])
    floor = eigenvalues.numel() * torch.finfo(eigenvalues.dtype).eps * lam_max
    return lam_max / lam_min if lam_max > 0 and lam_min > floor else float("inf")


def neuron_bounds(model: nn.Sequential, loss_fn: Callable, x: Tensor, y: Tensor, ggn: Tensor) -> list[dict]:
    """For every neuron of every Linear layer of a float64 Sequential model without BatchNorm: κ of its GGN
    block (from ``ggn``, the dense GGN of the mean loss over ``(x, y)``), κ(Dᵢ), κ(ĤᵀĤ), whether the bound holds,
    and ``block_error``: the relative difference between the block and ``ĤᵀDᵢĤ`` (D from the tail's Jacobian)."""
    if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        raise ValueError("neuron_bounds needs samples that do not interact: a model without BatchNorm")
    offsets, layers = param_offsets(model), list(model)
    out = []
    h = x
    with torch.no_grad():
        f = model(x)
    loss_blocks = output_loss_hessian_blocks(loss_fn, f, y)  # N × K × K
    for idx, m in enumerate(layers):
        if isinstance(m, nn.Linear):
            tail = nn.Sequential(*layers[idx + 1:])
            u = m(h).detach()
            ju = vmap(jacrev(lambda row, tail=tail: tail(row[None])[0]))(u)  # N × K × width
            d = torch.einsum("nki,nkl,nli->ni", ju, loss_blocks, ju).detach()  # D_{n,i}
            ext = torch.cat([h.reshape(h.shape[0], -1), torch.ones(h.shape[0], 1, dtype=h.dtype)], dim=1)
            kappa_h = condition_number(torch.linalg.eigvalsh(ext.T @ ext))
            w0, b0, d_in = offsets[id(m.weight)], offsets[id(m.bias)], m.in_features
            for i in range(m.out_features):
                index = torch.tensor([*range(w0 + i * d_in, w0 + (i + 1) * d_in), b0 + i])
                block = ggn[index][:, index]
                formula = ext.T @ (d[:, i:i + 1] * ext)  # Ĥᵀ Dᵢ Ĥ
                error = float((block - formula).abs().max()) / max(float(block.abs().max()), 1e-300)
                kappa_block = condition_number(torch.linalg.eigvalsh(block))
                d_min, d_max = float(d[:, i].min()), float(d[:, i].max())
                kappa_d = d_max / d_min if d_min > 0 else float("inf")
                bound = kappa_d * kappa_h
                out.append({"layer": idx, "neuron": i, "kappa_block": kappa_block, "kappa_d": kappa_d,
                            "kappa_hidden": kappa_h, "finite": bound < float("inf"), "block_error": error,
                            "holds": kappa_block <= bound * (1 + 1e-8)})
        with torch.no_grad():
            h = m(h)
    return out
