"""The generalized Gauss–Newton matrix ``G = Jᵀ H_ℓ J``: a PSD surrogate of the Hessian (docs/theory.md §5).

For a loss ``L(p) = ℓ(F(p))`` of the network's outputs ``F`` (all samples of a batch at once,
so train-mode BatchNorm's coupling of samples is kept), the chain rule splits the Hessian:

    H = Jᵀ H_ℓ J + Σ_j (∂ℓ/∂F_j) ∇²F_j,        J = ∂F/∂p,  H_ℓ = ∂²ℓ/∂F².

The first term is the GGN ``G``. For mean squared error ``H_ℓ = (2/(NK)) I`` and for
cross-entropy ``H_ℓ`` is block-diagonal over samples with blocks ``(diag(π) − ππᵀ)/N``
(``π`` the softmax): both PSD, so ``G`` is PSD at every point, where ``H`` is indefinite away
from a minimizer. ``G = H`` when ``F`` is linear in ``p`` (linear and logistic regression) and
at a minimizer where every residual ``∂ℓ/∂F`` vanishes. Every output-preserving direction
``v`` (``Jv = 0``: translation and scale invariances) is an exact null vector of ``G``.

Here ``J`` comes from ``torch.func.jacrev`` of the whole batch's outputs, and ``H_ℓ`` from
double backward through the loss of the outputs, one output coordinate at a time (its blocks
are per sample because the loss is a sum over samples). Dense, float64: small models only.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from precond.hessian import Batch


def output_jacobian(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(F, J)``: the outputs ``F`` (N × K) and ``J = ∂F/∂p`` (N × K × n) over the trainable parameters.

    Call inside :func:`precond.hessian.measurement_mode` so BatchNorm's mode is explicit.
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = tuple(p.detach() for p in model.parameters() if p.requires_grad)

    def outputs(*ps):
        return functional_call(model, dict(zip(names, ps)), (x,))

    jac = jacrev(outputs, argnums=tuple(range(len(params))))(*params)
    f = outputs(*params).detach()
    return f, torch.cat([j.reshape(*f.shape, -1) for j in jac], dim=-1)


def output_loss_hessian_blocks(loss_fn: Callable[[Tensor, Tensor], Tensor], f: Tensor, y: Tensor) -> Tensor:
    """Per-sample blocks ``∂²ℓ/∂F_n∂F_n`` (N × K × K) of a loss that is a sum (or mean) over samples.

    Row ``k`` of every block is ``∂/∂F[:, :] of Σ_n ∂ℓ/∂F[n, k]`` (one double backward); cross-sample
    terms are zero for such a loss, so the sum over ``n`` picks out each sample's own block.
    """
    f = f.detach().requires_grad_(True)
    with torch.enable_grad():
        grad = torch.autograd.grad(loss_fn(f, y), f, create_graph=True)[0]
        rows = [torch.autograd.grad(grad[:, k].sum(), f, retain_graph=True)[0] for k in range(f.shape[1])]
    return torch.stack(rows, dim=1).detach()  # [n, k, l] = ∂²ℓ/∂F[n,k]∂F[n,l]


def dense_ggn(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batches: Iterable[Batch]) -> Tensor:
    """``G = (1/B) Σ_b J_bᵀ H_ℓ,b J_b`` in float64 for the mean loss over ``batches`` (n × n, PSD).

    Works on a float64 copy of the model; call it inside :func:`precond.hessian.measurement_mode`.
    """
    model64 = copy.deepcopy(model).double()
    batches = list(batches)
    if not batches:
        raise ValueError("dense_ggn needs at least one (inputs, targets) batch")
    total = None
    for x, y in batches:
        x = x.double() if x.is_floating_point() else x
        y = y.double() if y.is_floating_point() else y
        f, jac = output_jacobian(model64, x)
        if f.dim() != 2:
            raise ValueError(f"dense_ggn needs outputs of shape N × K, got {tuple(f.shape)}")
        blocks = output_loss_hessian_blocks(loss_fn, f, y)
        g = torch.einsum("nkp,nkl,nlq->pq", jac, blocks, jac)
        total = g if total is None else total + g
    total /= len(batches)
    return (total + total.T) / 2
