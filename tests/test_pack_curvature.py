"""A pack's Lanczos κ from stacked products: each member's result equals its own measure_curvature
(float64, 1e-10), and the stacked product equals each member's dense Hessian times its vector."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from precond import build_optimizer
from precond.curvature import CurvatureSettings, measure_curvature
from precond.hessian import dense_hessian, measurement_mode
from precond.run.monitors import CurvatureMonitor
from precond.sweep import pack_curvature
from precond.sweep.pack_curvature import StackedHessian, measure_together, prepare_pack_curvature

RTOL = 1e-10


def _models(kind, jobs=3):
    models = []
    for seed in range(jobs):
        torch.manual_seed(seed)
        if kind == "mlp_batchnorm":
            model = nn.Sequential(nn.Flatten(), nn.Linear(6, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3))
        elif kind == "cnn_batchnorm":
            model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(3 * 2 * 2, 3))
        else:  # linear least squares
            model = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
        models.append(model.double())
    return models


def _data(kind, seed=0, n=96):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, 4, 4) if kind == "cnn_batchnorm" else (n, 6)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * (torch.arange(6, dtype=torch.float64) + 1 if
                                                                 kind != "cnn_batchnorm" else 1.0)
    if kind == "linear":
        return x, torch.randn(n, 2, generator=g, dtype=torch.float64), "regression"
    return x, torch.randint(0, 3, (n,), generator=g), "classification"


def _monitors(kind, preconditioner="rmsprop", bn_mode="train", jobs=3):
    """Members as a pack has them: own seed, own lr, own fixed batches, a few steps of their own optimizer."""
    x, y, task = _data(kind)
    loss_fn = F.mse_loss if task == "regression" else F.cross_entropy
    settings = CurvatureSettings(method="lanczos", tol=1e-8, max_matvecs=60, bn_mode=bn_mode, layers=False)
    monitors = []
    for j, model in enumerate(_models(kind, jobs)):
        opt = build_optimizer(model.parameters(), preconditioner, lr=0.01 * (j + 1))
        for step in range(3):
            opt.zero_grad()
            loss_fn(model(x[step * 16:(step + 1) * 16]), y[step * 16:(step + 1) * 16]).backward()
            opt.step()
        monitors.append(CurvatureMonitor(model, loss_fn, x, y, opt, settings, default_batch_size=16, seed=j))
    return monitors, task


@pytest.mark.parametrize("kind,bn_mode", [("linear", "train"), ("mlp_batchnorm", "train"), ("mlp_batchnorm", "eval"),
                                          ("cnn_batchnorm", "train")])
@pytest.mark.parametrize("space", ["p", "z"])
def test_each_members_kappa_equals_its_own_measurement(kind, bn_mode, space):
    monitors, task = _monitors(kind, bn_mode=bn_mode)
    together = measure_together(monitors, space, task)
    for monitor, result in zip(monitors, together):
        s = monitor.settings
        alone = measure_curvature(monitor.model, monitor.loss_fn, monitor.batches, optimizer=monitor.optimizer,
                                  space=space, tol=s.tol, max_matvecs=s.max_matvecs, method=s.method,
                                  bn_mode=s.bn_mode)
        assert result.lam_max == pytest.approx(alone.lam_max, rel=RTOL)
        assert result.lam_min == pytest.approx(alone.lam_min, rel=RTOL, abs=1e-12 * abs(alone.lam_max))
        assert (result.matvecs, result.converged, result.flag) == (alone.matvecs, alone.converged, alone.flag)
        if alone.kappa is not None:
            assert result.kappa == pytest.approx(alone.kappa, rel=1e-8)
    # the members differ (else equal results would not show that each got its own block)
    assert len({round(r.lam_max, 12) for r in together}) == len(together)


def test_the_stacked_product_is_each_members_dense_hessian_times_its_vector():
    monitors, task = _monitors("mlp_batchnorm")
    models = [m.model for m in monitors]
    with measurement_mode(models[0], "train"), measurement_mode(models[1], "train"), \
            measurement_mode(models[2], "train"):
        op = StackedHessian(models, task, [m.batches for m in monitors])
        v = torch.randn(len(models), op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        hv = op.matvec(v)
        for j, monitor in enumerate(monitors):
            h = dense_hessian(monitor.model, monitor.loss_fn, monitor.batches)
            torch.testing.assert_close(hv[j], h @ v[j], rtol=1e-10, atol=1e-12)


def test_measuring_leaves_the_models_and_their_running_statistics_alone():
    monitors, task = _monitors("mlp_batchnorm")
    before = [{k: v.clone() for k, v in m.model.state_dict().items()} for m in monitors]
    measure_together(monitors, "p", task)
    for monitor, state in zip(monitors, before):
        for k, v in monitor.model.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert monitor.model.training


def test_a_pack_reports_the_prepared_results_and_measures_only_what_cannot_be_stacked(monkeypatch):
    """prepare_pack_curvature fills every member's monitor; the monitor's call then reports them without
    measuring again; a lone member (nothing to stack with) is measured by its monitor as before."""
    monitors, task = _monitors("linear")
    calls = []
    real = pack_curvature.measure_together
    monkeypatch.setattr(pack_curvature, "measure_together",
                        lambda ms, space, t: calls.append((len(ms), space)) or real(ms, space, t))
    prepare_pack_curvature([(m,) for m in monitors], step=0, final=True, task=task)
    assert sorted(calls) == [(3, "p"), (3, "z")]
    measured_alone = []
    import precond.run.monitors as monitors_module
    monkeypatch.setattr(monitors_module, "measure_curvature", lambda *a, **k: measured_alone.append(k["space"]))
    records = [m(0, True) for m in monitors]
    assert measured_alone == []
    assert all(r["curvature/p/kappa"] > 1 and r["curvature/z/kappa"] > 1 for r in records)
    assert all(m.prepared == {} for m in monitors)
    calls.clear()
    prepare_pack_curvature([(monitors[0],)], step=0, final=True, task=task)
    assert calls == [] and monitors[0].prepared == {}


def test_members_with_different_settings_are_not_stacked_together():
    monitors, task = _monitors("linear")
    import dataclasses
    monitors[2].settings = dataclasses.replace(monitors[2].settings, tol=1e-6)
    prepare_pack_curvature([(m,) for m in monitors], step=0, final=True, task=task)
    assert set(monitors[0].prepared) == {"p", "z"} and set(monitors[1].prepared) == {"p", "z"}
    assert monitors[2].prepared == {}
