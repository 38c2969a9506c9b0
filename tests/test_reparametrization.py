"""The BatchNorm reparametrization's block P against an explicitly reparametrized model and BNP's transform."""
import torch
from torch import nn
from torch.nn import functional as F

from precond.bnp import transform_layer_grads
from precond.hessian import dense_hessian
from precond.models import mlp
from precond.reparametrization import BN_EPS, bn_reparametrization_matrix, layer_input_moments


class Reparametrized(nn.Module):
    """``u = W̃ (h − μ)/σ + b̃`` per Linear of ``model``, with μ, σ frozen buffers: the model in z."""

    def __init__(self, model, moments):
        super().__init__()
        self.layers = nn.ModuleList()
        self.stats = {}
        for m in model:
            if isinstance(m, nn.Linear):
                mean, var = moments[m]
                sigma = (var + BN_EPS).sqrt()
                lin = nn.Linear(m.in_features, m.out_features).double()
                with torch.no_grad():
                    lin.weight.copy_(m.weight.double() * sigma)        # W̃ = W σ
                    lin.bias.copy_(m.bias.double() + m.weight.double() @ mean)  # b̃ = b + W μ
                lin.register_buffer("mu", mean)
                lin.register_buffer("sigma", sigma)
                self.layers.append(lin)
            else:
                self.layers.append(m)

    def forward(self, x):
        for m in self.layers:
            x = F.linear((x - m.mu) / m.sigma, m.weight, m.bias) if isinstance(m, nn.Linear) else m(x)
        return x


def _setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64) * torch.logspace(0, -2, 6, dtype=torch.float64) + 3.0
    y = torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    return mlp((6,), 3, "none", widths=(5, 4)).double(), x, y


def test_PT_H_P_is_the_hessian_of_the_reparametrized_model():
    model, x, y = _setup()
    p = bn_reparametrization_matrix(model, x)
    twin = Reparametrized(model, layer_input_moments(model, x))
    torch.testing.assert_close(twin(x), model(x), rtol=1e-12, atol=1e-12)  # same function at these weights
    h_p = dense_hessian(model, F.cross_entropy, [(x, y)])
    h_z = dense_hessian(twin, F.cross_entropy, [(x, y)])
    torch.testing.assert_close(p.T @ h_p @ p, h_z, rtol=1e-8, atol=1e-10)
    assert float((p - torch.eye(p.shape[0], dtype=p.dtype)).abs().max()) > 0.1  # P is far from I: inputs are offset


def test_P_PT_is_bnps_gradient_transform_with_the_same_statistics():
    model, x, y = _setup()
    p = bn_reparametrization_matrix(model, x)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grad = torch.cat([q.grad.reshape(-1) for q in model.parameters()])
    moments = layer_input_moments(model, x)
    expected = []
    for m in model:
        if isinstance(m, nn.Linear):
            mean, var = moments[m]
            g_w, g_b = transform_layer_grads(m, m.weight.grad, m.bias.grad, mean, var, BN_EPS)
            expected += [g_w.reshape(-1), g_b.reshape(-1)]
    torch.testing.assert_close(p @ p.T @ grad, torch.cat(expected), rtol=1e-10, atol=1e-12)


def test_bnp_block_P_reproduces_bnps_step_with_its_own_running_statistics():
    """P Pᵀ g with P from BNP's state is the direction BNP's SGD step applies (momentum 0)."""
    from precond import build_optimizer
    from precond.reparametrization import bnp_moments

    model, x, y = _setup()
    opt = build_optimizer(model.parameters(), "bnp", lr=0.1, model=model, momentum=0.0, bnp_warmup=0)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x[:16]), y[:16]).backward()
        opt.step()
    moments, eps = bnp_moments(opt, model)
    p = bn_reparametrization_matrix(model, None, eps=eps, moments=moments)
    before = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
    opt.zero_grad()
    F.cross_entropy(model(x[:16]), y[:16]).backward()
    grad = torch.cat([q.grad.reshape(-1) for q in model.parameters()])
    opt.step()
    moments, eps = bnp_moments(opt, model)  # the step commits this batch's moments first
    p = bn_reparametrization_matrix(model, None, eps=eps, moments=moments)
    after = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
    torch.testing.assert_close(before - after, 0.1 * p @ p.T @ grad, rtol=1e-9, atol=1e-12)
