"""preconditioner=torch_optim: any torch.optim optimizer as the chain's preconditioner, against the same optimizer
alone; its state through a checkpoint; what it refuses (z needs a P it does not expose)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from precond.black_box import UNSUPPORTED, torch_optimizers
from precond.curvature import measure_curvature
from precond.errors import ConfigError
from precond.optim import build_optimizer
from precond.sweep.pack_rules import alone_reason

STEPS = 12


def problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    return model, x, y


def trajectory(model, x, y, opt, lrs=None):
    g = torch.Generator().manual_seed(3)
    for k in range(STEPS):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[k]
        idx = torch.randint(0, 40, (8,), generator=g)
        opt.zero_grad()
        F.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name,options", [("NAdam", {}), ("Adamax", {"betas": (0.8, 0.99)}),
                                          ("Adam", {"amsgrad": True}),
                                          ("RAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
                                          ("Adadelta", {}), ("Rprop", {})])
def test_torch_optim_follows_the_optimizer_alone(name, options):
    model, x, y = problem()
    twin = problem()[0]
    lrs = [0.05 * (1 - k / STEPS) + 1e-3 for k in range(STEPS)]  # a schedule reaches the inner optimizer
    ours = trajectory(model, x, y, build_optimizer(model.parameters(), "torch_optim", lr=0.05, optimizer=name,
                                                   options=options), lrs)
    ref = trajectory(twin, x, y, getattr(torch.optim, name)(twin.parameters(), lr=0.05, **options), lrs)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


def test_l2_in_p_enters_the_black_box_like_torch_weight_decay():
    """The p-penalty runs before the box, on the gradient it sees: Adam + L2 in p = torch Adam(weight_decay)."""
    model, x, y = problem()
    twin = problem()[0]
    ours = trajectory(model, x, y, build_optimizer(model.parameters(), "torch_optim", lr=0.05, optimizer="Adam",
                                                   regularization="l2", variable="p", strength=0.1))
    ref = trajectory(twin, x, y, torch.optim.Adam(twin.parameters(), lr=0.05, weight_decay=0.1))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


def test_a_checkpointed_black_box_resumes_exactly():
    """float32, as runs train by default. (In float64, torch's own load_state_dict casts an optimizer's scalar
    state such as NAdam's mu_product to the parameters' dtype, so torch.optim.NAdam alone is not bit-exact across
    a round trip either; the black box inherits exactly that behaviour.)"""
    model, x, y = problem()
    twin = problem()[0]
    model, twin, x, y = model.float(), twin.float(), x.float(), y.float()
    make = lambda ps: build_optimizer(ps, "torch_optim", lr=0.05, optimizer="NAdam")  # noqa: E731
    straight, split = make(model.parameters()), make(twin.parameters())
    g = torch.Generator().manual_seed(3)
    for k in range(STEPS):
        idx = torch.randint(0, 40, (8,), generator=g)
        for mdl, opt in ((model, straight), (twin, split)):
            opt.zero_grad()
            F.mse_loss(mdl(x[idx]), y[idx]).backward()
            opt.step()
        if k == 4:
            saved = split.state_dict()
            assert any("exp_avg" in s for s in saved["state"].values())  # the inner state is in the outer one
            split = make(twin.parameters())
            split.load_state_dict(saved)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_what_a_black_box_refuses():
    model, x, y = problem()
    with pytest.raises(ConfigError, match=r"name: expected one of the installed optimizers \[.*'NAdam'.*\], got "
                                          r"'Nadam'"):
        build_optimizer(model.parameters(), "torch_optim", lr=0.1, optimizer="Nadam")
    with pytest.raises(ConfigError, match="LBFGS.*re-evaluates a closure"):
        build_optimizer(model.parameters(), "torch_optim", lr=0.1, optimizer="LBFGS")
    with pytest.raises(ConfigError, match=r"options\.bogus: expected a keyword of torch.optim.NAdam"):
        build_optimizer(model.parameters(), "torch_optim", lr=0.1, optimizer="NAdam", options={"bogus": 1})
    with pytest.raises(ConfigError, match=r"options: expected keyword arguments besides lr"):
        build_optimizer(model.parameters(), "torch_optim", lr=0.1, optimizer="NAdam", options={"lr": 1})
    with pytest.raises(ConfigError, match=r"options: .*Invalid beta"):
        build_optimizer(model.parameters(), "torch_optim", lr=0.1, optimizer="NAdam", options={"betas": (0.9, 2)})
    with pytest.raises(ConfigError, match=r"preconditioner\.name: .*Muon only supports 2D"):
        build_optimizer(model.parameters(), "torch_optim", lr=0.1, optimizer="Muon")
    for reg in ({"variable": "z", "regularization": "l2"}, {"variable": "p", "regularization": "l1"}):
        with pytest.raises(ConfigError, match=r"regularization\.(variable|form): expected a penalty in variable=p "
                                              r"with preconditioner=torch_optim"):
            build_optimizer(model.parameters(), "torch_optim", lr=0.1, optimizer="Adam", strength=0.1, **reg)
    opt = build_optimizer(model.parameters(), "torch_optim", lr=0.1, optimizer="Adam")
    trajectory(model, x, y, opt)
    with pytest.raises(NotImplementedError, match="exposes no P"):
        measure_curvature(model, F.mse_loss, [(x, y)], optimizer=opt, space="z")
    assert measure_curvature(model, F.mse_loss, [(x, y)], optimizer=opt, space="p").lam_max > 0  # p still works
    assert "no job axis" in alone_reason({"preconditioner": {"name": "NAdam"}})


def test_the_installed_optimizers_are_torch_optims_minus_the_unsupported():
    names = torch_optimizers()
    assert {"SGD", "Adam", "NAdam", "Adadelta"} <= set(names) and not set(UNSUPPORTED) & set(names)
    assert all(issubclass(cls, torch.optim.Optimizer) for cls in names.values())


def test_options_given_as_a_mapping_on_the_command_line_reach_the_optimizer(tmp_path):
    """`preconditioner.options={...}` replaces the default (it merged into a struct {} before and was refused)."""
    import yaml

    from tests.conftest import run_in_process

    argv = ["preconditioner=torch_optim", "preconditioner.name=RAdam", "steps=3", "eval_every=3",
            "preconditioner.options={betas: [0.8, 0.99], decoupled_weight_decay: true}", f"hydra.run.dir={tmp_path}"]
    assert run_in_process(argv) == 0
    options = yaml.safe_load((tmp_path / "config.yaml").read_text())["preconditioner"]["options"]
    assert options == {"betas": [0.8, 0.99], "decoupled_weight_decay": True}
