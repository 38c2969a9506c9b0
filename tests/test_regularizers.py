"""L1 and gradient-norm penalties in p or z against literal references written from docs/theory.md §3 (float64)."""
import pytest
import torch
from torch.func import functional_call, hessian

from precond import build_optimizer

LR, STEPS = 0.05, 8
HYPER = {"sgd": dict(momentum=0.9), "adagrad": {}, "rmsprop": {}, "adam": {}}
PENALTIES = [("l2", None), ("l1", "subgradient"), ("l1", "prox"), ("gradnorm", None)]


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    x = torch.randn(24, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.3, 0.1, 0.03], dtype=torch.float64)
    y = torch.randn(24, 2, generator=g, dtype=torch.float64)
    return model, x, y


def _batch(x, y, k):
    idx = slice((k * 6) % 24, (k * 6) % 24 + 6)
    return x[idx], y[idx]


def run_ours(precond, penalty, form, variable, strength, backend="double_backward", steps=STEPS, r=None, max_m=None):
    model, x, y = _setup()
    kw = dict(form=form) if penalty == "l1" else {}
    if penalty == "gradnorm":
        kw.update(backend=backend, r=r, max_m=max_m)
    opt = build_optimizer(model.parameters(), precond, lr=LR, regularization=penalty, variable=variable,
                          strength=strength, **kw, **HYPER[precond])
    traj = []
    for k in range(steps):
        xb, yb = _batch(x, y, k)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            return loss

        opt.step(closure)
        traj.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
    return torch.stack(traj)


def _flat_loss(model, names, shapes):
    def loss(theta, xb, yb):
        params, start = {}, 0
        for n, s in zip(names, shapes):
            size = int(torch.tensor(s).prod()) if len(s) else 1
            params[n] = theta[start:start + size].view(s)
            start += size
        return torch.nn.functional.mse_loss(functional_call(model, params, (xb,)), yb)
    return loss


def soft(x, t):
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0)


def run_reference(precond, penalty, form, variable, lam, steps=STEPS, max_m=1e4, capped=None):
    """Literal docs/theory.md §2–3: moments on g (+ p-penalty); z rows as steps on z = P⁻¹p mapped back.
    The z gradient-norm penalty uses M̃ = min(M, max_m); ``capped`` (a list) collects how many entries the
    cap changed per step."""
    model, x, y = _setup()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    loss = _flat_loss(model, names, shapes)
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    s = torch.zeros_like(theta)
    m, v, buf = torch.zeros_like(theta), torch.zeros_like(theta), None
    traj = []
    for k in range(1, steps + 1):
        xb, yb = _batch(x, y, k - 1)
        g = torch.func.grad(loss)(theta, xb, yb)
        H = hessian(loss)(theta, xb, yb)
        g_in = g
        if variable == "p":
            g_in = {"l2": g + lam * theta, "gradnorm": g + lam * H @ g, "l1": g}[penalty]
            if penalty == "l1" and form == "subgradient":
                g_in = g + lam * torch.sign(theta)
        # preconditioner: D with M = 1/D, and the unregularized direction
        if precond == "sgd":
            D, direction = torch.ones_like(theta), g_in
        elif precond == "adagrad":
            s = s + g_in**2
            D = s.sqrt() + 1e-10
            direction = g_in / D
        elif precond == "rmsprop":
            v = 0.99 * v + 0.01 * g_in**2
            D = v.sqrt() + 1e-8
            direction = g_in / D
        else:
            m = 0.9 * m + 0.1 * g_in
            v = 0.999 * v + 0.001 * g_in**2
            D = (v / (1 - 0.999**k)).sqrt() + 1e-8
            direction = (m / (1 - 0.9**k)) / D
        P, M = D.rsqrt(), 1.0 / D
        if variable == "z":
            z = theta / P
            dz = direction / P  # P⁻¹ M (·) = P (·): the unregularized step in z
            if penalty == "l2":
                dz = dz + lam * z
            elif penalty == "l1" and form == "subgradient":
                dz = dz + lam * torch.sign(z)
            elif penalty == "gradnorm":
                Mt = M.clamp(max=max_m)  # the step in p is λ M̃ H (M̃ g): in z it is P⁻¹ of that
                dz = dz + lam * (Mt / P) * (H @ (Mt * g))  # uncapped: ∇_z ½ g(Pz)ᵀ M g(Pz) = Pᵀ H M g
                if capped is not None:
                    capped.append(int((M > max_m).sum()))
            if precond == "sgd":  # heavy ball (P = I, so z = p)
                buf = dz.clone() if buf is None else 0.9 * buf + dz
                dz = buf
            z_new = z - LR * dz
            if penalty == "l1" and form == "prox":
                z_new = soft(z_new, LR * lam)
            theta = P * z_new
        else:
            if precond == "sgd":
                buf = direction.clone() if buf is None else 0.9 * buf + direction
                direction = buf
            theta = theta - LR * direction
            if penalty == "l1" and form == "prox":
                theta = soft(theta, LR * lam * M)
        traj.append(theta.clone())
    return torch.stack(traj)


@pytest.mark.parametrize("variable", ["p", "z"])
@pytest.mark.parametrize("penalty,form", PENALTIES, ids=[f"{p}-{f}" if f else p for p, f in PENALTIES])
@pytest.mark.parametrize("precond", list(HYPER))
def test_composed_step_equals_literal_reference(precond, penalty, form, variable):
    lam = 0.05
    ours = run_ours(precond, penalty, form, variable, lam)
    ref = run_reference(precond, penalty, form, variable, lam)
    plain = run_reference(precond, "l2", None, variable, 0.0)
    assert (ref[-1] - plain[-1]).abs().max() > 1e-6, "the penalty must change the trajectory"
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("variable", ["p", "z"])
@pytest.mark.parametrize("precond", ["sgd", "adam"])
def test_prox_gives_exact_zeros_where_the_reference_does(precond, variable):
    lam = 2.0 if precond == "sgd" else 0.5
    ours = run_ours(precond, "l1", "prox", variable, lam)
    ref = run_reference(precond, "l1", "prox", variable, lam)
    assert (ref[-1] == 0).sum() >= 3
    assert torch.equal(ours[-1] == 0, ref[-1] == 0)
    sub = run_ours(precond, "l1", "subgradient", variable, lam)
    assert (sub[-1] == 0).sum() == 0, "the subgradient form does not produce exact zeros"


@pytest.mark.parametrize("penalty,form,backend", [
    ("l2", None, None), ("l1", "subgradient", None), ("l1", "prox", None),
    ("gradnorm", None, "double_backward"), ("gradnorm", None, "finite_difference"),
])
def test_sgd_p_and_z_trajectories_are_identical(penalty, form, backend):
    kw = dict(backend=backend) if backend else {}
    p = run_ours("sgd", penalty, form, "p", 0.05, **kw)
    z = run_ours("sgd", penalty, form, "z", 0.05, **kw)
    torch.testing.assert_close(p, z, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("variable", ["p", "z"])
def test_finite_difference_agrees_with_double_backward_to_order_r(variable):
    exact = run_ours("adam", "gradnorm", None, variable, 0.5, backend="double_backward", steps=1)
    errors = []
    for r in (1e-2, 1e-3, 1e-4):
        fd = run_ours("adam", "gradnorm", None, variable, 0.5, backend="finite_difference", steps=1, r=r)
        errors.append(float((fd - exact).abs().max()))
    assert errors[0] > 0
    assert 5 < errors[0] / errors[1] < 20 and 5 < errors[1] / errors[2] < 20  # first order in r


def test_default_r_is_the_strength_giving_the_sam_like_gradient():
    """With r = λ in the p variable, the penalized gradient is exactly ∇f(p + λg)."""
    model, x, y = _setup()
    lam = 0.01
    opt = build_optimizer(model.parameters(), "sgd", lr=LR, regularization="gradnorm", variable="p",
                          strength=lam, backend="finite_difference")
    theta0 = [p.detach().clone() for p in model.parameters()]
    closure = _closure(model, opt, x, y)
    closure()
    g = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        for p, gi in zip(model.parameters(), g):
            p.add_(gi, alpha=lam)
    closure()
    sam = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        for p, t in zip(model.parameters(), theta0):
            p.copy_(t)
    opt.step(closure)
    for p, t, s_ in zip(model.parameters(), theta0, sam):
        torch.testing.assert_close(p.detach(), t - LR * s_, rtol=1e-12, atol=1e-14)


def _closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    return closure


def test_finite_difference_protects_batchnorm_statistics_and_restores_grads():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                                torch.nn.Linear(4, 1)).double()
    twin = __import__("copy").deepcopy(model)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    opt = build_optimizer(model.parameters(), "adam", lr=0.1, regularization="gradnorm", variable="p",
                          strength=0.1, buffers=model.buffers())
    opt.step(_closure(model, opt, x, y))
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.0)
    _closure(twin, twin_opt, x, y)()  # one unperturbed forward/backward at the same starting point
    bn, bn_twin = model[1], twin[1]
    torch.testing.assert_close(bn.running_mean, bn_twin.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, bn_twin.running_var, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == 1
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)  # p.grad is the unperturbed gradient


def test_gradnorm_without_closure_is_a_clear_error():
    model, x, y = _setup()
    opt = build_optimizer(model.parameters(), "adam", regularization="gradnorm", strength=0.1)
    torch.nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"optimizer.step\(closure\)"):
        opt.step()


def test_double_backward_with_a_closure_that_keeps_no_graph_is_a_clear_error():
    model, x, y = _setup()
    opt = build_optimizer(model.parameters(), "adam", regularization="gradnorm", strength=0.1,
                          backend="double_backward")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        return loss

    with pytest.raises(RuntimeError, match="finite_difference"):
        opt.step(closure)


@pytest.mark.parametrize("kwargs,match", [
    (dict(regularization="l1", form="lasso"), r"^form: expected one of \['subgradient', 'prox'\]"),
    (dict(regularization="l2", form="prox"), r"^form: expected null with regularization l2"),
    (dict(regularization="gradnorm", backend="forward"), r"^backend: expected one of"),
    (dict(regularization="gradnorm", r=-1.0), r"^r: expected a finite number > 0"),
    (dict(regularization="l1", backend="double_backward"), r"^backend: expected null with regularization l1"),
])
def test_bad_combinations_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer([torch.zeros(2, 2, requires_grad=True)], "adam", strength=0.1, **kwargs)


def test_regularization_metrics_report_sparsity_and_penalty():
    w = torch.tensor([[0.0, 2.0], [-1.0, 0.0]], requires_grad=True)
    b = torch.tensor([3.0], requires_grad=True)
    opt = build_optimizer([w, b], "sgd", regularization="l1", strength=0.5, policy="weights")
    metrics = opt.regularization_metrics()
    assert metrics["reg/sparsity"] == 0.5  # the bias is not penalized under policy=weights
    assert metrics["reg/penalty"] == pytest.approx(0.5 * 3.0)


@pytest.mark.parametrize("backend", ["double_backward", "finite_difference"])
def test_gradnorm_uses_each_groups_strength(backend):
    """Two groups with λ₁ ≠ λ₂: p ← p − η(g + Λ H g) with Λ the per-parameter strength (SGD, one step)."""
    model, x, y = _setup()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    loss = _flat_loss(model, names, shapes)
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    g = torch.func.grad(loss)(theta, x, y)
    H = hessian(loss)(theta, x, y)
    params = list(model.parameters())
    lams = [0.02, 0.02, 0.005, 0.005]
    lam = torch.cat([torch.full((p.numel(),), l, dtype=torch.float64) for p, l in zip(params, lams)])
    expected = theta - LR * (g + lam * (H @ g))
    opt = build_optimizer([{"params": params[:2], "strength": 0.02}, {"params": params[2:], "strength": 0.005}],
                          "sgd", lr=LR, regularization="gradnorm", variable="p", strength=0.02, backend=backend,
                          r=1e-7 if backend == "finite_difference" else None)
    opt.step(_closure(model, opt, x, y))
    got = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-6 if backend == "finite_difference" else 1e-12, atol=1e-9)
    metrics = opt.regularization_metrics()
    g_parts = torch.split(g, [p.numel() for p in params])
    want = sum(0.5 * l * float(gp.pow(2).sum()) for gp, l in zip(g_parts, lams))
    assert metrics["reg/penalty"] == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("penalty,closed_form", [
    ("l2", lambda ps, lam: 0.5 * lam * sum(float(p.pow(2).sum()) for p in ps)),
    ("l1", lambda ps, lam: lam * sum(float(p.abs().sum()) for p in ps)),
])
def test_regularization_metrics_use_each_groups_strength(penalty, closed_form):
    """Groups of strength 1.0 and 0.1: the penalty is Σ_groups of each group's own λ (not the first group's)."""
    a = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    opt = build_optimizer([{"params": [a], "strength": 1.0}, {"params": [b], "strength": 0.1}], "adam",
                          regularization=penalty, strength=1.0, variable="z")
    want = closed_form([a.detach()], 1.0) + closed_form([b.detach()], 0.1)
    assert opt.regularization_metrics()["reg/penalty"] == pytest.approx(want, rel=1e-12)


def test_double_backward_keeps_tensor_backward_untouched_outside_its_closure():
    """The create_graph switch is scoped to the optimizer's call of the closure (no process-wide patch)."""
    original = torch.Tensor.backward
    model, x, y = _setup()
    opt = build_optimizer(model.parameters(), "sgd", lr=LR, regularization="gradnorm", strength=0.01,
                          backend="double_backward")
    seen = {}

    def closure():
        seen["backward_is_original"] = torch.Tensor.backward is original
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        seen["graph"] = next(model.parameters()).grad.requires_grad
        return loss

    opt.step(closure)
    assert seen == {"backward_is_original": True, "graph": True}
    assert torch.Tensor.backward is original
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()  # outside the step: a plain backward
    assert not next(model.parameters()).grad.requires_grad


def test_the_z_gradnorm_penalty_caps_m_elementwise_as_the_reference_does():
    """With max_m below some of Adam's M the capped step equals the literal M̃ = min(M, max_m) reference,
    and differs from the uncapped one (the cap is exercised, not idle)."""
    capped = []
    ref = run_reference("adam", "gradnorm", None, "z", 0.05, max_m=3.0, capped=capped)
    assert sum(capped) > 0 and min(capped) < len(ref[0])  # some entries capped, not all
    ours = run_ours("adam", "gradnorm", None, "z", 0.05, max_m=3.0)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11)
    uncapped = run_reference("adam", "gradnorm", None, "z", 0.05, max_m=float("inf"))
    assert (uncapped - ref).abs().max() > 1e-3


def _one_adam_gradnorm_z_step(max_m):
    """One Adam step with the z gradient-norm penalty on ½Σhᵢwᵢ², from w with one coordinate at 1e-9:
    its gradient is ~1e-9, so Adam's M = 1/(√v̂ + ε) there is ~1e8 while its curvature h is 1."""
    from precond.regularizers import GradNorm

    w = torch.nn.Parameter(torch.tensor([1.0, 0.5, 1e-9], dtype=torch.float64))
    h = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    opt = build_optimizer([w], "adam", lr=1e-3, regularization="gradnorm", variable="z", strength=1e-3,
                          backend="double_backward", max_m=max_m)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (h * w**2).sum()
        loss.backward(create_graph=torch.is_grad_enabled() and GradNorm in map(type, opt.direction_links))
        return loss

    before = w.detach().clone()
    opt.step(closure)
    return float((w.detach() - before).abs().max()), next(l for l in opt.direction_links if isinstance(l, GradNorm))


def test_the_default_cap_keeps_the_z_penalty_bounded_where_adams_m_reaches_one_over_eps():
    """Uncapped, the penalty's step on the quiet coordinate is λ·M·h·(Mg) ~ 1e-3·1e8·1·0.1: it explodes. With the
    default cap (1e4) the step stays near Adam's own (≈ lr)."""
    from precond.regularizers import DEFAULT_MAX_M

    moved, link = _one_adam_gradnorm_z_step(None)
    assert link.max_m == DEFAULT_MAX_M
    assert moved < 0.01
    moved_uncapped, _ = _one_adam_gradnorm_z_step(1e12)
    assert moved_uncapped > 1.0  # ×1000 Adam's own step


@pytest.mark.parametrize("precond,variable", [("sgd", "p"), ("adam", "z")])
def test_penalty_share_is_the_terms_norm_over_the_directions(precond, variable):
    """reg/penalty_share = ‖λ·term‖/‖direction without it‖ at the last step, from a dense Hessian (float64):
    p with SGD: ‖λHg‖/‖g‖; z with Adam's first step (m̂ = g, v̂ = g²): ‖λM̃HM̃g‖/‖M̃... g/(|g|+ε)‖."""
    from precond.run.monitors import RegularizationMonitor

    model, x, y = _setup()
    lam = 0.01
    names = [n for n, _ in model.named_parameters()]
    loss = _flat_loss(model, names, [p.shape for p in model.parameters()])
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    xb, yb = _batch(x, y, 0)
    g = torch.func.grad(loss)(theta, xb, yb)
    H = hessian(loss)(theta, xb, yb)
    if variable == "p":
        expected = (lam * H @ g).norm() / g.norm()
    else:
        M = 1.0 / (g.abs() + 1e-8)
        Mt = M.clamp(max=1e4)
        expected = (lam * Mt * (H @ (Mt * g))).norm() / (g * M).norm()
    opt = build_optimizer(model.parameters(), precond, lr=LR, regularization="gradnorm", variable=variable,
                          strength=lam, backend="double_backward")
    opt.step(_closure(model, opt, xb, yb))
    share = RegularizationMonitor(opt)(1, False)["reg/penalty_share"]
    assert share == pytest.approx(float(expected), rel=1e-9)


def test_max_m_outside_gradnorm_is_a_clear_error():
    from precond.errors import ConfigError

    model, _, _ = _setup()
    with pytest.raises(ConfigError, match="max_m"):
        build_optimizer(model.parameters(), "adam", regularization="l2", variable="z", strength=0.1, max_m=10.0)


def test_penalty_share_is_the_mean_over_the_steps_since_it_was_last_read():
    from precond.run.monitors import RegularizationMonitor

    """Two steps, then a read: the mean of the two per-step shares (each checked against ‖λHg‖/‖g‖ with SGD, P = I,
    from a dense Hessian at that step's parameters); then the count starts again."""
    model, x, y = _setup()
    lam = 0.05
    names = [n for n, _ in model.named_parameters()]
    loss = _flat_loss(model, names, [p.shape for p in model.parameters()])
    opt = build_optimizer(model.parameters(), "sgd", lr=LR, regularization="gradnorm", variable="p", strength=lam,
                          backend="double_backward")
    shares = []
    for k in range(2):
        xb, yb = _batch(x, y, k)
        theta = torch.cat([p.detach().flatten() for p in model.parameters()])
        g = torch.func.grad(loss)(theta, xb, yb)
        shares.append(float((lam * hessian(loss)(theta, xb, yb) @ g).norm() / g.norm()))
        opt.step(_closure(model, opt, xb, yb))
    assert shares[0] != pytest.approx(shares[1], rel=1e-3)  # the mean is not just one of them
    monitor = RegularizationMonitor(opt)
    assert monitor(2, False)["reg/penalty_share"] == pytest.approx(sum(shares) / 2, rel=1e-9)
    assert "reg/penalty_share" not in monitor(2, False)  # nothing since the last read
    # a third step, read by a monitor restored from the first one's checkpointed state: that step's share only
    xb, yb = _batch(x, y, 2)
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    g = torch.func.grad(loss)(theta, xb, yb)
    third = float((lam * hessian(loss)(theta, xb, yb) @ g).norm() / g.norm())
    opt.step(_closure(model, opt, xb, yb))
    restored = RegularizationMonitor(opt)
    restored.load_state_dict(monitor.state_dict())
    assert restored(3, False)["reg/penalty_share"] == pytest.approx(third, rel=1e-9)
