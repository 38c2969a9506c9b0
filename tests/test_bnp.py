"""BNP: equivalence with a gradient step on the BatchNorm reparametrization, statistics, batch size 1."""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from precond import build_optimizer
from precond.bnp import batch_moments

LR = 0.1


def _bnp_step_with_frozen_stats(layer, x, y, mean, var, eps):
    """One BNP step (base SGD, no momentum) with the statistics set to (mean, var)."""
    opt = build_optimizer(layer.parameters(), "bnp", lr=LR, model=layer, bnp_eps=eps)
    opt.zero_grad()
    F.mse_loss(layer(x), y).backward()
    state = opt.state[layer.weight]
    state.update({"bnp.mean": mean.clone(), "bnp.var": var.clone(), "bnp.count": 10**6,
                  "bnp.m1": mean.clone(), "bnp.m2": var + mean**2})
    opt.direction_links[0]._pending.clear()  # the statistics are frozen: commit nothing
    opt.step()
    return layer


def _reparam_step(layer, x, y, mean, var, eps):
    """Gradient step on u = W̃ (h − μ)/σ + b̃, mapped back to W = W̃/σ, b = b̃ − W̃ μ/σ."""
    conv = isinstance(layer, nn.Conv2d)
    shape = (1, -1, 1, 1) if conv else (1, -1)
    sigma = (var + eps).sqrt()
    w_t = (layer.weight.detach() * sigma.view(shape)).requires_grad_()
    b_t = (layer.bias.detach() + (layer.weight.detach() * mean.view(shape)).sum(dim=tuple(range(1, layer.weight.ndim)))
           ).requires_grad_()
    h_norm = (x - mean.view(shape)) / sigma.view(shape)
    out = F.conv2d(h_norm, w_t, b_t) if conv else F.linear(h_norm, w_t, b_t)
    g_w, g_b = torch.autograd.grad(F.mse_loss(out, y), (w_t, b_t))
    w_new, b_new = w_t.detach() - LR * g_w, b_t.detach() - LR * g_b
    weight = w_new / sigma.view(shape)
    bias = b_new - (w_new * (mean / sigma).view(shape)).sum(dim=tuple(range(1, w_new.ndim)))
    return weight, bias


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_frozen_bnp_step_is_a_gradient_step_on_the_batchnorm_reparametrization(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer = nn.Linear(4, 3).double()
        x = torch.randn(10, 4, dtype=torch.float64) * 2 + 1
        y = torch.randn(10, 3, dtype=torch.float64)
        c = 4
    else:
        layer = nn.Conv2d(3, 2, kernel_size=3, padding=0).double()  # no padding: the reparam is exact
        x = torch.randn(5, 3, 6, 6, dtype=torch.float64) * 2 + 1
        y = torch.randn(5, 2, 4, 4, dtype=torch.float64)
        c = 3
    mean = torch.linspace(-1.0, 2.0, c, dtype=torch.float64)
    var = torch.linspace(0.5, 3.0, c, dtype=torch.float64)
    ref_w, ref_b = _reparam_step(copy.deepcopy(layer), x, y, mean, var, 1e-5)
    ours = _bnp_step_with_frozen_stats(copy.deepcopy(layer), x, y, mean, var, 1e-5)
    assert (ref_w - layer.weight).abs().max() > 1e-3
    torch.testing.assert_close(ours.weight.detach(), ref_w, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(ours.bias.detach(), ref_b, rtol=1e-12, atol=1e-13)


def test_running_statistics_match_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double()
    rho = 0.3
    opt = build_optimizer(model.parameters(), "bnp", lr=0.01, model=model, rho=rho)
    xs = [torch.randn(4, 2, 6, 6, dtype=torch.float64) * (k + 1) + k for k in range(5)]
    inputs_of_linear = []
    for x in xs:
        def closure(x=x):
            opt.zero_grad()
            out = model(x)
            out.pow(2).mean().backward()
            return out.sum()
        with torch.no_grad():
            inputs_of_linear.append(model[:3](x))
        opt.step(closure)
    for layer, hs, dims in ((model[0], xs, (0, 2, 3)), (model[3], inputs_of_linear, (0,))):
        m1 = m2 = 0
        for h in hs:  # direct: exponential moving averages of the batch moments, then bias correction
            m1 = (1 - rho) * m1 + rho * h.mean(dim=dims)
            m2 = (1 - rho) * m2 + rho * (h * h).mean(dim=dims)
        corr = 1 - (1 - rho) ** len(hs)
        state = opt.state[layer.weight]
        torch.testing.assert_close(state["bnp.mean"], m1 / corr)
        torch.testing.assert_close(state["bnp.var"], (m2 / corr - (m1 / corr) ** 2).clamp(min=0))
        assert state["bnp.count"] == len(hs)


def test_eval_forwards_and_extra_forwards_do_not_enter_the_statistics():
    torch.manual_seed(0)
    layer = nn.Linear(3, 1).double()
    opt = build_optimizer(layer.parameters(), "bnp", lr=0.01, model=layer, rho=1.0)
    x = torch.randn(8, 3, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        loss = layer(x).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    layer.eval()
    layer(torch.full((8, 3), 100.0, dtype=torch.float64))
    layer.train()
    opt.step(closure)
    torch.testing.assert_close(opt.state[layer.weight]["bnp.mean"], x.mean(0))


def test_batch_moments_for_conv_average_over_batch_and_positions():
    conv = nn.Conv2d(2, 1, 1)
    h = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).view(2, 2, 2, 2)
    mean, sq = batch_moments(conv, h)
    torch.testing.assert_close(mean, h.transpose(0, 1).reshape(2, -1).mean(1))
    torch.testing.assert_close(sq, (h**2).transpose(0, 1).reshape(2, -1).mean(1))


def test_state_dict_round_trips_and_continues_identically():
    torch.manual_seed(0)
    def make():
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    model = make()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    opt = build_optimizer(model.parameters(), "bnp", lr=0.05, model=model, momentum=0.9)

    def run(m, o, n):
        for k in range(n):
            def closure():
                o.zero_grad()
                loss = F.mse_loss(m(x[k % 4 * 4:(k % 4 + 1) * 4]), y[k % 4 * 4:(k % 4 + 1) * 4])
                loss.backward()
                return loss
            o.step(closure)

    run(model, opt, 6)
    twin = copy.deepcopy(model)
    twin_opt = build_optimizer(twin.parameters(), "bnp", lr=0.05, model=twin, momentum=0.9)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    run(model, opt, 6)
    run(twin, twin_opt, 6)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "needs build_optimizer"),
    (dict(model="bn"), "has BatchNorm layers"),
    (dict(model="plain", regularization="l2", variable="z", strength=0.1), "variable=p"),
    (dict(model="plain", regularization="l1", strength=0.1), "variable=p"),
    (dict(model="plain", base="lbfgs"), r"^base: expected one of \['adagrad', 'adam', 'rmsprop', 'sgd'\]"),
])
def test_bnp_refuses_what_it_cannot_do(kwargs, match):
    models = {"bn": nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), "plain": nn.Linear(2, 2)}
    if "model" in kwargs:
        kwargs["model"] = models[kwargs["model"]]
    params = kwargs["model"].parameters() if "model" in kwargs else [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match=match):
        build_optimizer(params, "bnp", **kwargs)


def test_bnp_with_batchnorm_allowed_and_adam_base():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    opt = build_optimizer(model.parameters(), "bnp", model=model, allow_batchnorm=True, base="adam",
                          betas=(0.8, 0.9), lr=0.01)
    x = torch.randn(8, 2)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    assert "adam.exp_avg" in opt.state[model[0].weight] and opt.param_groups[0]["betas"] == (0.8, 0.9)
