"""Curvature: HVPs, Lanczos and the dense path against closed forms and eigvalsh (float64)."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from precond import build_optimizer
from precond.curvature import kappa_of, measure_curvature
from precond.hessian import HessianOperator, dense_hessian, lanczos_extremes
from precond.normalization import hidden_matrix_kappas


def _data(n=64, d=5, seed=0, scales=(1.0, 0.5, 0.1, 0.05, 0.01)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor(scales, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2)).double()


@pytest.mark.parametrize("hvp_mode", ["double_backward", "forward_over_reverse"])
def test_hvp_equals_dense_hessian_times_vector(hvp_mode):
    model = _mlp()
    x, _ = _data()
    y = torch.randn(64, 2, dtype=torch.float64)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    h = dense_hessian(model, F.mse_loss, batches)
    op = HessianOperator(model, F.mse_loss, batches, hvp_mode=hvp_mode)
    v = torch.randn(op.n, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["lanczos", "dense"])
def test_least_squares_matches_closed_form(method):
    x, y = _data()
    model = nn.Linear(5, 1).double()
    xh = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], 1)
    eig = torch.linalg.eigvalsh(2 * xh.T @ xh / 64)  # mse_loss = mean (Xw + b − y)²  ⇒  H = 2 X̂ᵀX̂/N
    res = measure_curvature(model, F.mse_loss, [(x, y)], method=method, tol=1e-10)
    assert res.converged and res.method == method
    assert res.lam_max == pytest.approx(float(eig[-1]), rel=1e-8)
    assert res.lam_min == pytest.approx(float(eig[0]), rel=1e-6)
    assert res.kappa == pytest.approx(float(eig[-1] / eig[0]), rel=1e-6) and res.flag is None


def test_logistic_regression_matches_xdx():
    x, _ = _data()
    y = (x[:, :1] + 0.3 * torch.randn(64, 1, dtype=torch.float64) > 0).double()
    model = nn.Linear(5, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0]]))
    xh = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], 1)
    s = torch.sigmoid(model(x)).squeeze(1).detach()
    eig = torch.linalg.eigvalsh(xh.T @ torch.diag(s * (1 - s)) @ xh / 64)
    res = measure_curvature(model, F.binary_cross_entropy_with_logits, [(x, y)], method="lanczos", tol=1e-10)
    assert res.lam_max == pytest.approx(float(eig[-1]), rel=1e-8)
    assert res.lam_min == pytest.approx(float(eig[0]), rel=1e-6)


def test_lanczos_matches_eigvalsh_on_a_small_nonconvex_model():
    model = _mlp()
    x, _ = _data()
    y = torch.randn(64, 2, dtype=torch.float64)
    eig = torch.linalg.eigvalsh(dense_hessian(model, F.mse_loss, [(x, y)]))
    res = measure_curvature(model, F.mse_loss, [(x, y)], method="lanczos", tol=1e-10)
    assert res.converged
    assert res.lam_max == pytest.approx(float(eig[-1]), rel=1e-6)
    assert res.lam_min == pytest.approx(float(eig[0]), rel=1e-6)
    assert float(eig[0]) < 0 and res.kappa is None and res.flag == "indefinite"


def test_preconditioned_operator_matches_dense_product_for_adam_state():
    model = _mlp()
    x, _ = _data()
    y = torch.randn(64, 2, dtype=torch.float64)
    opt = build_optimizer(model.parameters(), "adam", lr=0.01)
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    v_hat = [opt.state[p]["adam.exp_avg_sq"] / (1 - 0.999**5) for p in model.parameters()]
    p_diag = torch.cat([(v.sqrt() + 1e-8).rsqrt().reshape(-1) for v in v_hat])
    h = dense_hessian(model, F.mse_loss, [(x, y)])
    eig = torch.linalg.eigvalsh(p_diag[:, None] * h * p_diag[None, :])
    for method in ("lanczos", "dense"):
        res = measure_curvature(model, F.mse_loss, [(x, y)], optimizer=opt, space="z", method=method, tol=1e-10)
        assert res.lam_max == pytest.approx(float(eig[-1]), rel=1e-6)
        assert res.lam_min == pytest.approx(float(eig[0]), rel=1e-6)


def test_z_space_needs_a_precond_optimizer():
    model = _mlp()
    x, y = _data()
    with pytest.raises(ValueError, match="space='z' needs"):
        measure_curvature(model, F.mse_loss, [(x, y)], space="z")


class FreshBatches:
    """An iterable that draws new data every pass: the operator changes between products."""

    def __iter__(self):
        yield torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)


def test_determinism_check_catches_train_mode_batchnorm_with_varying_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    with pytest.raises(RuntimeError, match="not deterministic"):
        measure_curvature(model, F.mse_loss, FreshBatches(), method="lanczos", bn_mode="train")
    x, y = _data(n=16)
    fixed = measure_curvature(model, F.mse_loss, [(x, y)], method="lanczos", bn_mode="train", tol=1e-8)
    again = measure_curvature(model, F.mse_loss, [(x, y)], method="lanczos", bn_mode="train", tol=1e-8)
    assert fixed.lam_max == again.lam_max and fixed.bn_mode == "train"


def test_measurement_leaves_batchnorm_state_and_mode_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    model.train()
    before = [b.clone() for b in model.buffers()]
    x, y = _data(n=16)
    train_mode = measure_curvature(model, F.mse_loss, [(x, y)], method="dense", bn_mode="train")
    eval_mode = measure_curvature(model, F.mse_loss, [(x, y)], method="dense", bn_mode="eval")
    assert train_mode.lam_max != pytest.approx(eval_mode.lam_max)
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_kappa_is_never_clipped():
    assert kappa_of(4.0, 2.0) == (2.0, None)
    assert kappa_of(4.0, -1e-3) == (None, "indefinite")
    assert kappa_of(4.0, 0.0) == (None, "singular")


def test_lanczos_reports_non_convergence_within_budget():
    d = torch.logspace(0, -6, 400, dtype=torch.float64)
    lam_max, lam_min, matvecs, converged, _ = lanczos_extremes(lambda v: d * v, 400, "cpu", tol=1e-8,
                                                              max_matvecs=10)
    assert matvecs == 10 and not converged
    assert lam_max == pytest.approx(1.0, rel=1e-3) and lam_min > 1e-6


def test_hidden_matrix_kappas_and_layernorm_null_vector():
    torch.manual_seed(0)
    x, _ = _data(n=200)
    model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8, elementwise_affine=False), nn.Linear(8, 1)).double()
    got = hidden_matrix_kappas(model, x)
    xh = torch.cat([x, torch.ones(200, 1, dtype=torch.float64)], 1)
    eig = torch.linalg.eigvalsh(xh.T @ xh / 200)
    assert got["0"]["kappa_hidden"] == pytest.approx(float(eig[-1] / eig[0]), rel=1e-8)
    # rows after LayerNorm are centred: [1; 0] is a null vector of Ĥ, κ is undefined but κ⁺ is finite
    assert got["2"]["kappa_hidden"] is None and 1 <= got["2"]["kappa_hidden_plus"] < 1e6


def _bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()


def _finite_difference_hessian(model, x, y, r=1e-5):
    """Central differences of the double-precision gradient, column by column (no autograd of second order)."""
    from precond.hessian import measurement_mode

    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def grad_at(theta):
        with torch.no_grad():
            torch._foreach_copy_(params, [t.view_as(p) for t, p in zip(torch.split(theta, [p.numel() for p in params]),
                                                                          params)])
        with torch.enable_grad():
            loss = F.mse_loss(model(x), y)
            return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    with measurement_mode(model, "train"):
        cols = [(grad_at(flat + r * e) - grad_at(flat - r * e)) / (2 * r) for e in torch.eye(flat.numel(),
                                                                                            dtype=torch.float64)]
        grad_at(flat)
    h = torch.stack(cols, dim=1)
    return (h + h.T) / 2


def test_dense_hessian_of_train_mode_batchnorm_matches_finite_differences_and_lanczos():
    """torch.func.hessian is wrong here (asymmetric); the dense path must give the true values."""
    model = _bn_model()
    x, y = _data(n=32)
    reference = _finite_difference_hessian(model, x, y)
    from precond.hessian import measurement_mode

    with measurement_mode(model, "train"):
        dense = dense_hessian(model, F.mse_loss, [(x, y)])
    torch.testing.assert_close(dense, reference, rtol=1e-6, atol=1e-7)
    eig = torch.linalg.eigvalsh(reference)
    by_dense = measure_curvature(model, F.mse_loss, [(x, y)], method="dense", bn_mode="train")
    by_lanczos = measure_curvature(model, F.mse_loss, [(x, y)], method="lanczos", bn_mode="train", tol=1e-10)
    for res in (by_dense, by_lanczos):
        assert res.lam_max == pytest.approx(float(eig[-1]), rel=1e-6)
        assert res.lam_min == pytest.approx(float(eig[0]), rel=1e-5, abs=1e-8)


def test_z_space_curvature_of_batchnorm_under_adam_matches_finite_differences():
    """P from Adam's state can be ~1e4 on biases before BN: errors in H are amplified in PᵀHP."""
    model = _bn_model(seed=1)
    x, y = _data(n=32, seed=1)
    opt = build_optimizer(model.parameters(), "adam", lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    reference = _finite_difference_hessian(model, x, y)
    p = torch.cat([d.reshape(-1).rsqrt() for _, d in opt.preconditioner_denominators()])
    eig = torch.linalg.eigvalsh(p[:, None] * reference * p[None, :])
    for method in ("dense", "lanczos"):
        res = measure_curvature(model, F.mse_loss, [(x, y)], optimizer=opt, space="z", method=method,
                                bn_mode="train", tol=1e-10)
        assert res.lam_max == pytest.approx(float(eig[-1]), rel=1e-5), method
        assert res.lam_min == pytest.approx(float(eig[0]), rel=1e-4), method


def test_forward_over_reverse_matches_double_backward_on_batchnorm():
    model = _bn_model()
    x, y = _data(n=32)
    from precond.hessian import measurement_mode

    with measurement_mode(model, "train"):
        fwd = HessianOperator(model, F.mse_loss, [(x, y)], hvp_mode="forward_over_reverse")
        ref = HessianOperator(model, F.mse_loss, [(x, y)])
        v = torch.randn(ref.n, dtype=torch.float64)
        torch.testing.assert_close(fwd.matvec(v), ref.matvec(v), rtol=1e-10, atol=1e-12)
        fwd.check_against_double_backward()  # agrees: no error


def test_forward_over_reverse_is_refused_when_it_disagrees(monkeypatch):
    model = _mlp()
    x, y = _data()
    y = torch.randn(64, 2, dtype=torch.float64)
    right = HessianOperator._forward_over_reverse
    monkeypatch.setattr(HessianOperator, "_forward_over_reverse",
                        lambda self, *a: [1.01 * h for h in right(self, *a)])  # a 1% wrong transform
    with pytest.raises(RuntimeError, match="disagree with double backward"):
        measure_curvature(model, F.mse_loss, [(x, y)], method="lanczos", hvp_mode="forward_over_reverse")


def test_dense_is_refused_for_a_model_too_large_for_memory():
    from precond.errors import ConfigError

    model = nn.Linear(20_000, 1).double()
    x = torch.randn(4, 20_000, dtype=torch.float64)
    with pytest.raises(ConfigError, match="use method lanczos"):
        measure_curvature(model, F.mse_loss, [(x, torch.zeros(4, 1, dtype=torch.float64))], method="dense")


def test_kappa_plus_skips_the_null_space_and_refuses_an_indefinite_spectrum():
    from precond.curvature import kappa_plus_of

    assert kappa_plus_of(torch.tensor([0.0, 1e-12, 0.5, 2.0], dtype=torch.float64)) == (4.0, 2)
    assert kappa_plus_of(torch.tensor([-0.1, 0.5, 2.0], dtype=torch.float64)) == (None, 0)
    assert kappa_plus_of(torch.tensor([0.25, 0.5, 2.0], dtype=torch.float64)) == (8.0, 0)


def test_batchnorm_makes_the_hessian_singular_along_the_biases_before_it():
    """Train-mode BatchNorm subtracts the batch mean, so the loss does not depend on the bias of the
    Linear layer before it: H has (at least) one exact null direction per BatchNorm channel, at any
    point. κ is then undefined and κ⁺ over the rest of the spectrum is finite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    res = measure_curvature(model, F.mse_loss, [(x, y)], method="dense")
    metrics = res.as_metrics()
    assert metrics["curvature/p/null_dim"] >= 4  # one bias per BatchNorm channel, at least
    eig = torch.linalg.eigvalsh(_dense_reference(model, x, y))
    non_null = eig[eig.abs() > 1e-7 * eig[-1]]
    if non_null[0] > 0:
        assert metrics["curvature/p/kappa_plus"] == pytest.approx(float(eig[-1] / non_null[0]), rel=1e-6)
    else:
        assert metrics["curvature/p/kappa_plus"] is None


def _dense_reference(model, x, y):
    """H by torch.autograd.functional.hessian over the flattened parameters (an independent route)."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            size = int(torch.tensor(shape).prod()) if len(shape) else 1
            params[name] = theta[start:start + size].reshape(shape)
            start += size
        return F.mse_loss(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)
