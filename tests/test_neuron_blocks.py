"""The per-neuron GGN block ĤᵀDĤ: its D against the dense GGN, and the bound κ(block) ≤ κ(D)·κ(ĤᵀĤ)."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from precond.ggn import dense_ggn
from precond.neuron_blocks import neuron_bounds


def _setup(act):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64) * torch.tensor([1, 0.3, 3, 0.1], dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), act(), nn.Linear(5, 3)).double(), x, y


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_bound_holds_for_every_neuron_with_a_finite_bound(act):
    model, x, y = _setup(act)
    g = dense_ggn(model, F.cross_entropy, [(x, y)])
    rows = neuron_bounds(model, F.cross_entropy, x, y, g)
    assert len(rows) == 8 and all(r["holds"] for r in rows)
    assert max(r["block_error"] for r in rows) < 1e-10  # the GGN's block is ĤᵀDĤ with D from another Jacobian
    finite = [r for r in rows if r["finite"]]
    assert len(finite) >= 3  # at least the output layer (softmax curvature > 0 on every sample)
    assert all(r["kappa_block"] > 1 for r in finite)


def test_bound_is_violated_when_D_is_wrong():
    """The check can fail: with the hidden layer's κ(ĤᵀĤ) replaced by 1, the tanh layer's blocks exceed κ(D)."""
    model, x, y = _setup(nn.Tanh)
    rows = neuron_bounds(model, F.cross_entropy, x, y, dense_ggn(model, F.cross_entropy, [(x, y)]))
    first = [r for r in rows if r["layer"] == 0]
    assert any(r["kappa_block"] > r["kappa_d"] for r in first)  # κ(ĤᵀĤ) matters: the inputs are badly scaled


def test_refuses_batchnorm():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    with pytest.raises(ValueError, match="BatchNorm"):
        neuron_bounds(model, F.cross_entropy, torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4).long(),
                      torch.eye(48, dtype=torch.float64))


def test_a_numerically_singular_matrix_has_an_infinite_condition_number_not_a_rounding_one():
    """A rank-deficient ĤᵀĤ computes to λmin ≈ 1e-17·λmax in float64: κ ≈ 1e16 is rounding. Read as a number, it
    made the bound report violations that are noise (kappa_plus, seed 11); it is ∞, and the bound vacuous."""
    from precond.neuron_blocks import condition_number

    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 3, generator=g, dtype=torch.float64)
    singular = torch.cat([a, a[:, :1] * 3.0], dim=1)  # a column that repeats another: rank 3 of 4
    eig = torch.linalg.eigvalsh(singular.T @ singular)
    assert 0 < abs(float(eig[0])) / float(eig[-1]) < 1e-14  # rounding, not zero, not a gap
    assert condition_number(eig) == float("inf")
    full = torch.linalg.eigvalsh(a.T @ a)
    assert condition_number(full) == pytest.approx(float(full[-1] / full[0]), rel=1e-12)
    assert condition_number(torch.tensor([0.0, 0.0])) == float("inf")
