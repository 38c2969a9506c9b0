"""The composed optimizer reproduces torch.optim to float64 round-off (docs/theory.md §2, §3)."""
import copy

import pytest
import torch

from precond import build_optimizer

STEPS = 60


def _problem(seed=0):
    """A small two-layer regression problem in float64 with a bias (ndim 1) and weights (ndim 2)."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(40, 6, generator=g, dtype=torch.float64) * torch.logspace(0, -2, 6, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    return model, x, y


def _trajectory(make_opt, seed=0, steps=STEPS, use_closure=False, scheduler=None):
    model, x, y = _problem(seed)
    opt = make_opt(model.parameters())
    sched = scheduler(opt) if scheduler else None
    traj = []
    for k in range(steps):
        idx = slice((k * 8) % 40, (k * 8) % 40 + 8)  # minibatches: moments see varying gradients

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            return loss

        if use_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
        if sched is not None:
            sched.step()
        traj.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
    return torch.stack(traj)


CASES = [
    ("sgd", {}, torch.optim.SGD, {}),
    ("sgd momentum", dict(momentum=0.9), torch.optim.SGD, dict(momentum=0.9)),
    ("sgd dampening", dict(momentum=0.9, dampening=0.3), torch.optim.SGD, dict(momentum=0.9, dampening=0.3)),
    ("sgd nesterov", dict(momentum=0.9, nesterov=True), torch.optim.SGD, dict(momentum=0.9, nesterov=True)),
    ("adagrad", {}, torch.optim.Adagrad, {}),
    (
        "adagrad lr_decay",
        dict(lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-6),
        torch.optim.Adagrad,
        dict(lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-6),
    ),
    ("rmsprop", {}, torch.optim.RMSprop, {}),
    ("rmsprop centered momentum", dict(centered=True, momentum=0.5, alpha=0.9), torch.optim.RMSprop,
     dict(centered=True, momentum=0.5, alpha=0.9)),
    ("adam", dict(betas=(0.8, 0.99)), torch.optim.Adam, dict(betas=(0.8, 0.99))),
]


@pytest.mark.parametrize("name,hyper,torch_cls,torch_hyper", CASES, ids=[c[0] for c in CASES])
def test_preconditioner_matches_torch(name, hyper, torch_cls, torch_hyper):
    precond = name.split()[0]
    lr = 0.05 if precond != "sgd" else 0.1
    ours = _trajectory(lambda ps: build_optimizer(ps, precond, lr=lr, **hyper))
    ref = _trajectory(lambda ps: torch_cls(ps, lr=lr, foreach=False, **torch_hyper))
    assert ours.abs().max() > 0
    assert (ours[-1] - ours[0]).abs().max() > 1e-3, "the test problem must actually move"
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("precond,torch_cls,extra", [
    ("sgd", torch.optim.SGD, dict(momentum=0.9)),
    ("adagrad", torch.optim.Adagrad, {}),
    ("rmsprop", torch.optim.RMSprop, {}),
    ("adam", torch.optim.Adam, {}),
])
def test_l2_in_p_is_torch_weight_decay(precond, torch_cls, extra):
    ours = _trajectory(lambda ps: build_optimizer(ps, precond, lr=0.05, regularization="l2", variable="p",
                                                  strength=0.1, **extra))
    ref = _trajectory(lambda ps: torch_cls(ps, lr=0.05, weight_decay=0.1, foreach=False, **extra))
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)


def test_adam_l2_in_z_is_adamw():
    ours = _trajectory(lambda ps: build_optimizer(ps, "adam", lr=0.05, regularization="l2", variable="z",
                                                  strength=0.1))
    ref = _trajectory(lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1, foreach=False))
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)
    plain = _trajectory(lambda ps: build_optimizer(ps, "adam", lr=0.05))
    assert (ours[-1] - plain[-1]).abs().max() > 1e-3, "the decay must change the trajectory"


def test_adamw_also_matches_torch_foreach_path():
    ours = _trajectory(lambda ps: build_optimizer(ps, "adam", lr=0.05, regularization="l2", variable="z",
                                                  strength=0.1))
    ref = _trajectory(lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1, foreach=True))
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("hyper", [{}, dict(momentum=0.9), dict(momentum=0.9, nesterov=True)])
def test_sgd_p_and_z_variables_give_identical_trajectories(hyper):
    p = _trajectory(lambda ps: build_optimizer(ps, "sgd", lr=0.1, regularization="l2", variable="p",
                                               strength=0.3, **hyper))
    z = _trajectory(lambda ps: build_optimizer(ps, "sgd", lr=0.1, regularization="l2", variable="z",
                                               strength=0.3, **hyper))
    torch.testing.assert_close(p, z, rtol=1e-13, atol=1e-14)


def test_adam_p_and_z_differ():
    """The choice of variable matters as soon as P ≠ I."""
    p = _trajectory(lambda ps: build_optimizer(ps, "adam", lr=0.05, regularization="l2", variable="p", strength=0.3))
    z = _trajectory(lambda ps: build_optimizer(ps, "adam", lr=0.05, regularization="l2", variable="z", strength=0.3))
    assert (p[-1] - z[-1]).abs().max() > 1e-3


def test_policy_weights_leaves_biases_unregularized():
    def split(ps):
        ps = list(ps)
        return [{"params": [q for q in ps if q.ndim >= 2], "weight_decay": 0.2},
                {"params": [q for q in ps if q.ndim < 2], "weight_decay": 0.0}]

    ours = _trajectory(lambda ps: build_optimizer(ps, "adam", lr=0.05, regularization="l2", variable="z",
                                                  strength=0.2, policy="weights"))
    ref = _trajectory(lambda ps: torch.optim.AdamW(split(ps), lr=0.05, foreach=False))
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)


def test_param_groups_keep_their_own_hyperparameters():
    def groups(ps):
        ps = list(ps)
        return [{"params": ps[:2], "lr": 0.01}, {"params": ps[2:]}]

    ours = _trajectory(lambda ps: build_optimizer(groups(ps), "adam", lr=0.05))
    ref = _trajectory(lambda ps: torch.optim.Adam(groups(ps), lr=0.05, foreach=False))
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)


def test_closure_step_returns_loss_and_matches_plain_step():
    a = _trajectory(lambda ps: build_optimizer(ps, "rmsprop", lr=0.01), use_closure=True)
    b = _trajectory(lambda ps: build_optimizer(ps, "rmsprop", lr=0.01), use_closure=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_dict_round_trip_continues_identically():
    model, x, y = _problem()
    opt = build_optimizer(model.parameters(), "adam", lr=0.05, regularization="l2", variable="z", strength=0.1)

    def run(m, o, n):
        for _ in range(n):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()

    run(model, opt, 10)
    model2 = copy.deepcopy(model)
    opt2 = build_optimizer(model2.parameters(), "adam", lr=0.05, regularization="l2", variable="z", strength=0.1)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.state_dict()["state"][0]["adam.step"] == 10
    run(model, opt, 10)
    run(model2, opt2, 10)
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_lr_scheduler_drives_the_learning_rate():
    def sched(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)

    ours = _trajectory(lambda ps: build_optimizer(ps, "sgd", lr=0.1, momentum=0.9), scheduler=sched)
    ref = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=False), scheduler=sched)
    const = _trajectory(lambda ps: build_optimizer(ps, "sgd", lr=0.1, momentum=0.9))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-13)
    assert (ours[-1] - const[-1]).abs().max() > 1e-3, "the schedule must change the trajectory"


@pytest.mark.parametrize("kwargs,match", [
    (dict(preconditioner="lbfgs"),
     r"^name: expected one of \['adagrad', 'adam', 'bnp', 'full_matrix', 'kronecker', 'rmsprop', 'sgd', "
     r"'torch_optim'\]"),
    (dict(regularization="l3"), r"^name: expected one of \['none', 'l2', 'l1', 'gradnorm'\]"),
    (dict(regularization="l2", variable="q"), r"^variable: expected one of \['p', 'z'\]"),
    (dict(lr=-1.0), r"^lr: expected a finite number > 0"),
    (dict(strength=-0.1), r"^strength: expected a finite number >= 0"),
    (dict(policy="biases"), r"^policy: expected one of"),
    (dict(preconditioner="sgd", nesterov=True), "nesterov"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer([torch.zeros(2, requires_grad=True)], **kwargs)


def test_unknown_hyperparameter_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"^momentum: expected one of the keys .*'betas'"):
        build_optimizer([torch.zeros(2, requires_grad=True)], "adam", momentum=0.9)


@pytest.mark.parametrize("name,torch_cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                            ("rmsprop", torch.optim.RMSprop), ("adagrad", torch.optim.Adagrad)])
def test_a_one_element_tensor_lr_steps_as_torch_optim_steps_with_it(name, torch_cls):
    lr = torch.tensor(3e-3, dtype=torch.float64)
    ours = _trajectory(lambda p: build_optimizer(p, name, lr=lr.clone()), steps=10)
    theirs = _trajectory(lambda p: torch_cls(p, lr=lr.clone()), steps=10)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-14)


def test_a_tensor_lr_of_several_elements_is_refused_naming_lr():
    model, _, _ = _problem()
    with pytest.raises(ValueError, match=r"^lr: expected a number or a one-element tensor, got a tensor of shape"):
        build_optimizer(model.parameters(), "adam", lr=torch.tensor([1e-3, 2e-3]))
