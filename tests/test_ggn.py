"""The GGN against the dense Hessian (where they must agree) and against matrix-free Jᵀ H_ℓ J v products."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp, vjp
from torch.nn import functional as F

from precond.ggn import dense_ggn
from precond.hessian import dense_hessian, measurement_mode


def _data(n=40, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(0, -1.5, d, dtype=torch.float64)
    return x, torch.randint(0, k, (n,), generator=g), torch.randn(n, k, generator=g, dtype=torch.float64)


def _mlp(norm=None, seed=0):
    torch.manual_seed(seed)
    mid = [norm(5)] if norm else []
    return nn.Sequential(nn.Linear(6, 5), *mid, nn.ReLU(), nn.Linear(5, 3)).double()


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_ggn_is_the_hessian_of_a_model_linear_in_its_parameters(loss):
    x, labels, targets = _data()
    y, loss_fn = (targets, F.mse_loss) if loss == "mse" else (labels, F.cross_entropy)
    model = nn.Linear(6, 3).double()
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    torch.testing.assert_close(dense_ggn(model, loss_fn, batches), dense_hessian(model, loss_fn, batches),
                               rtol=1e-10, atol=1e-12)


def test_ggn_is_the_hessian_at_zero_residual():
    """MSE on targets equal to the outputs: the residual term Σ (∂ℓ/∂F) ∇²F vanishes, so H = G."""
    x, _, _ = _data()
    model = _mlp()
    y = model(x).detach()
    torch.testing.assert_close(dense_ggn(model, F.mse_loss, [(x, y)]), dense_hessian(model, F.mse_loss, [(x, y)]),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("norm", [None, nn.BatchNorm1d, nn.LayerNorm])
def test_ggn_matches_matrix_free_products_with_closed_form_softmax_hessian(norm):
    """G v = Jᵀ (H_ℓ (J v)) by a JVP, the closed form (diag π − ππᵀ)/N per sample, and a VJP — another path."""
    x, y, _ = _data()
    model = _mlp(norm)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    with measurement_mode(model, "train"):
        g = dense_ggn(model, F.cross_entropy, [(x, y)])

        def outputs(*ps):
            return functional_call(model, dict(zip(names, ps)), (x,))

        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            v = torch.randn(g.shape[0], generator=gen, dtype=torch.float64)
            chunks, start = [], 0
            for p in params:
                chunks.append(v[start:start + p.numel()].view_as(p))
                start += p.numel()
            f, jv = jvp(outputs, params, tuple(chunks))
            pi = torch.softmax(f, dim=1)
            hjv = (pi * jv - pi * (pi * jv).sum(dim=1, keepdim=True)) / x.shape[0]
            _, pullback = vjp(outputs, *params)
            gv = torch.cat([t.reshape(-1) for t in pullback(hjv)])
            torch.testing.assert_close(g @ v, gv, rtol=1e-9, atol=1e-12)
    eig = torch.linalg.eigvalsh(g)
    assert float(eig[0]) >= -1e-12 * float(eig[-1])  # PSD
    h = dense_hessian(model, F.cross_entropy, [(x, y)])
    assert float((h - g).abs().max()) > 1e-3 * float(g.abs().max())  # a nonlinear model: G is not H
