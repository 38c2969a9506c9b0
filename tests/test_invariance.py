"""Analytic invariances against the real model (finite moves leave the loss unchanged) and a dense Hessian."""
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.nn import functional as F

from precond.hessian import dense_hessian, measurement_mode
from precond.invariance import (
    complement_basis,
    null_residuals,
    projected_eigenvalues,
    scale_invariances,
    stack,
    translation_invariances,
)
from precond.models import mlp


def _setup(norm, after=False, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 6, generator=g, dtype=torch.float64) * 2 + 0.5
    y = torch.randint(0, 3, (48,), generator=g)
    torch.manual_seed(seed)
    model = mlp((6,), 3, norm, widths=(5, 4), norm_after_activation=after, norm_affine=affine).double()
    with torch.no_grad():  # γ, β away from 1, 0; ε ≈ 0 so that scale invariance is exact
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
                m.eps = 1e-300
                if affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model, x, y


def _loss_after_move(model, x, y, v, t):
    with torch.no_grad():
        flat = torch.nn.utils.parameters_to_vector(model.parameters())
        torch.nn.utils.vector_to_parameters(flat + t * v, model.parameters())
        with measurement_mode(model, "train"):
            loss = float(F.cross_entropy(model(x), y))
        torch.nn.utils.vector_to_parameters(flat, model.parameters())
    return loss


#: (normalization, norm after activation, affine) → directions: softmax shift 4+1, bias before BN 5+4, common
#: shift before LN (6+1)+(5+1), LN's output null vector (no γ, β) 4 (second layer) + 3 (output layer)
CASES = {("none", False, True): 5, ("batchnorm", False, True): 14, ("layernorm", False, True): 18,
         ("layernorm", True, True): 5, ("layernorm", True, False): 12}


@pytest.mark.parametrize(("norm", "after", "affine"), list(CASES))
def test_translation_invariances_leave_the_loss_unchanged_and_are_null_vectors_of_H(norm, after, affine):
    model, x, y = _setup(norm, after, affine)
    families = translation_invariances(model, softmax_output=True)
    v = stack(families, sum(p.numel() for p in model.parameters()))
    assert v.shape[1] == CASES[(norm, after, affine)]
    base = _loss_after_move(model, x, y, torch.zeros(v.shape[0], dtype=torch.float64), 0.0)
    for col in v.T:
        assert _loss_after_move(model, x, y, col, 0.7) == pytest.approx(base, rel=1e-12, abs=1e-13)
    with measurement_mode(model, "train"):
        h = dense_hessian(model, F.cross_entropy, [(x, y)])
    assert float(null_residuals(h, v).max()) < 1e-10


def test_a_direction_that_is_not_an_invariance_changes_the_loss():
    """The finite-move check above can fail: a softmax shift of one output row only is no invariance."""
    model, x, y = _setup("none")
    last = model[-1]
    v = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    offset = sum(p.numel() for p in model.parameters()) - last.bias.numel()
    v[offset] = 1.0  # one output bias
    assert abs(_loss_after_move(model, x, y, v, 0.7) - _loss_after_move(model, x, y, 0 * v, 0.0)) > 1e-5


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
def test_scale_invariances_keep_the_loss_and_satisfy_H_w_equals_minus_their_gradient_block(norm):
    model, x, y = _setup(norm)
    families = scale_invariances(model)
    assert sum(f.vectors.shape[1] for f in families) == (9 if norm == "batchnorm" else 2)
    v = stack(families, sum(p.numel() for p in model.parameters()))
    base = _loss_after_move(model, x, y, 0 * v[:, 0], 0.0)
    with measurement_mode(model, "train"):
        h = dense_hessian(model, F.cross_entropy, [(x, y)])
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    for col in v.T:
        assert _loss_after_move(model, x, y, col, 0.7) == pytest.approx(base, rel=1e-12)  # scale by 1.7
        torch.testing.assert_close(h @ col, -grad * (col != 0), rtol=1e-8, atol=1e-10)  # Hw = −∇_w L, not 0 here
    assert float(grad.norm()) > 1e-3  # so w is not a null vector here: only at a critical point


def test_projection_removes_exactly_the_given_null_space():
    """A matrix built with a known null space: the projected spectrum is its non-null eigenvalues, and the
    complement basis is orthonormal and orthogonal to the directions (scipy's null_space as the reference)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    lam = torch.tensor([0.0, 0.0, 0.0, 1e-3, 0.01, 0.1, 1, 2, 3, 5, 10, 100], dtype=torch.float64)
    m = q @ torch.diag(lam) @ q.T
    v = q[:, :3] @ torch.randn(3, 4, generator=g, dtype=torch.float64)  # 4 columns spanning a 3-dim null space
    torch.testing.assert_close(projected_eigenvalues(m, v), lam[3:], rtol=1e-10, atol=1e-12)
    basis = complement_basis(v)
    reference = torch.from_numpy(scipy.linalg.null_space(v.T.numpy()))
    assert basis.shape == reference.shape == (12, 9)
    torch.testing.assert_close(basis @ basis.T, reference @ reference.T, rtol=0, atol=1e-10)  # same subspace
    assert float(null_residuals(m, q[:, :1])) < 1e-14 and float(null_residuals(m, q[:, -1:])) == pytest.approx(1.0)


def test_invariances_refuse_a_model_that_is_not_sequential():
    class Net(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="Sequential"):
        translation_invariances(Net(), softmax_output=True)


@pytest.mark.parametrize(("norm", "after", "affine", "count"),
                         [("none", False, True, 9), ("batchnorm", False, True, 9), ("layernorm", False, True, 9),
                          ("layernorm", True, False, 0)])
def test_relu_rescalings_keep_the_outputs_and_are_null_vectors_of_the_ggn(norm, after, affine, count):
    """(θᵢ, −aᵢ) is tangent to the orbit θᵢ → cθᵢ, aᵢ → aᵢ/c: the loss changes only to second order along the
    straight line, and J v = 0, so the GGN maps it to zero exactly."""
    from precond.ggn import dense_ggn
    from precond.invariance import relu_rescalings

    model, x, y = _setup(norm, after, affine)
    v = stack(relu_rescalings(model), sum(p.numel() for p in model.parameters()))
    assert v.shape[1] == count
    if count == 0:
        return
    with measurement_mode(model, "train"):
        g = dense_ggn(model, F.cross_entropy, [(x, y)])
    assert float(null_residuals(g, v).max()) < 1e-10
    base = _loss_after_move(model, x, y, 0 * v[:, 0], 0.0)
    for col in v.T:  # first-order invariance: O(t²) change along the line, not O(t)
        assert abs(_loss_after_move(model, x, y, col, 1e-4) - base) < 1e-6
