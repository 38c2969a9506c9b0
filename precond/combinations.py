"""The rules that join settings of different config groups, in one function.

Each group's own rules live in its settings object; what only a *pair* of groups can decide
lives here, so a contributor finds every such rule in one place. Every argument is optional:
:func:`precond.build_optimizer` passes the two it knows (preconditioner, regularization), the
entry point passes everything before any data is built. Keys in messages are full config keys.
"""
from __future__ import annotations

from typing import Any

from precond.errors import ConfigError
from precond.metrics import target_metrics


def check_combinations(*, preconditioner: Any = None, regularization: Any = None, normalization: Any = None,
                       curvature: Any = None, loop: Any = None, data: Any = None, model: Any = None,
                       schedule: Any = None, options: Any = None) -> None:
    """Refuse combinations no run can train (ConfigError naming the key to change)."""
    if options is not None:
        _check_options_against_others(options, loop, data)
    bnp = getattr(preconditioner, "NAME", None) == "bnp"
    if bnp and regularization is not None and regularization.name != "none":
        prox = regularization.name == "l1" and (regularization.form or "prox") == "prox"
        if regularization.variable == "z" or prox:
            key, got = (("regularization.variable", "z") if regularization.variable == "z"
                        else ("regularization.form", "prox"))
            raise ConfigError(key, "penalties in variable=p (l2, l1 form=subgradient, gradnorm) with "
                              "preconditioner=bnp", got, "z = P⁻¹p and the L1 prox threshold need a diagonal P, "
                              "and BNP's P is block-diagonal per neuron")
    if not getattr(preconditioner, "EXPOSES_P", True) and regularization is not None \
            and regularization.name != "none" and (regularization.variable == "z" or _reads_diagonal_P(regularization)):
        key, got = (("regularization.variable", "z") if regularization.variable == "z"
                    else ("regularization.form", "prox"))
        raise ConfigError(key, f"a penalty in variable=p with preconditioner={preconditioner.NAME} (a black box: it "
                          "exposes no P, so z = P⁻¹p is undefined)", got,
                          "use variable=p (l1 with form=subgradient), or a preconditioner precond knows")
    non_diagonal = not getattr(preconditioner, "DIAGONAL", True)
    if non_diagonal and regularization is not None and _reads_diagonal_P(regularization):
        key, got = (("regularization.form", "prox") if regularization.variable == "p"
                    else ("regularization.variable", "z"))
        raise ConfigError(key, f"a penalty that does not read a diagonal P with preconditioner={preconditioner.NAME} "
                          "(its P is not diagonal)", got,
                          "use l2 (in z it is decoupled weight decay for any P), gradnorm in variable=p, or l1 "
                          "form=subgradient in variable=p")
    if bnp and curvature is not None and "z" in curvature.spaces:
        raise ConfigError("curvature.spaces", "[p] with preconditioner=bnp (its P is not diagonal)",
                          list(curvature.spaces), "set curvature.spaces=[p]")
    if bnp and normalization is not None and normalization.name == "batchnorm" and not preconditioner.allow_batchnorm:
        raise ConfigError("normalization", "no BatchNorm layers with preconditioner=bnp, which replaces BatchNorm",
                          "batchnorm",
                          "use normalization=none (or preconditioner.allow_batchnorm=true to combine them)")
    if bnp and loop is not None and preconditioner.bnp_warmup >= loop.steps:
        raise ConfigError("preconditioner.bnp_warmup", f"fewer than steps={loop.steps} (BNP takes plain "
                          f"{preconditioner.base} steps while it only collects statistics)", preconditioner.bnp_warmup,
                          "lower preconditioner.bnp_warmup or raise steps")
    if loop is not None:
        _check_loop_against_others(loop, normalization, curvature, data, schedule)
    if model is not None and data is not None and model.needs_images and not data.images():
        raise ConfigError("model", "a model for vector inputs (linear or mlp) with this dataset",
                          type(model).__name__, "use model=mlp, or a dataset of images (digits, mnist, cifar10)")
    if model is not None and normalization is not None and not model.supports(normalization.name):
        raise ConfigError("normalization", f"a normalization {type(model).__name__} can hold "
                          f"({', '.join(model.normalizations())})", normalization.name,
                          "the linear model has no hidden layer: use normalization=none or input")


def _reads_diagonal_P(regularization: Any) -> bool:
    """The penalties whose step reads ``P`` element-wise: L1 in z, the L1 prox (threshold ``ηλM`` or ``ηλP``)
    and gradient-norm in z (``λ½gᵀMg`` with ``M`` capped element-wise)."""
    if regularization.name == "l1":
        return regularization.variable == "z" or (regularization.form or "prox") == "prox"
    return regularization.name == "gradnorm" and regularization.variable == "z"


def _check_options_against_others(options: Any, loop: Any, data: Any) -> None:
    if loop is not None and options.dtype != "float32" and loop.precision == "bf16":
        raise ConfigError("precision", "fp32 with dtype=float64 (bf16 autocast keeps float32 weights)",
                          loop.precision, "use dtype=float32 with precision=bf16")
    if data is not None and options.channels_last and not data.images():
        raise ConfigError("channels_last", "false for vector inputs (it sets the memory format of C×H×W images)",
                          True, "this dataset has vector inputs")


def _check_loop_against_others(loop: Any, normalization: Any, curvature: Any, data: Any, schedule: Any) -> None:
    if normalization is not None and normalization.name == "batchnorm" and loop.batch_size < 2:
        raise ConfigError("batch_size", "at least 2 with normalization=batchnorm (train-mode BatchNorm needs "
                          "more than one sample per channel)", loop.batch_size,
                          "use normalization=none with preconditioner=bnp, or batch_size>=2")
    if curvature is not None and curvature.every % loop.eval_every:
        raise ConfigError("curvature.every", f"a positive multiple of eval_every={loop.eval_every}", curvature.every,
                          "curvature is measured at evaluation steps (and at the last step)")
    if schedule is not None:
        schedule.check_steps(loop.steps)
    if data is not None:
        n = data.train_size()
        if loop.batch_size > n:
            raise ConfigError("batch_size", f"at most the training-split size {n}", loop.batch_size,
                              "lower batch_size or use more training data")
        if curvature is not None and (curvature.batch_size or loop.batch_size) > n:
            raise ConfigError("curvature.batch_size", f"at most the training-split size {n}",
                              curvature.batch_size, "lower it, or null for the training batch_size")
        metrics = target_metrics(data.task)
        if loop.target.metric not in metrics:
            raise ConfigError("target.metric", f"one of {metrics} for a {data.task} dataset", loop.target.metric)
    _check_target_reachable(loop.target)


def _check_target_reachable(target: Any) -> None:
    """A target no run can reach would leave every time-to-target undefined (and a tuned sweep ranking by the
    final metric without saying so): accuracies lie in [0, 1], losses are ≥ 0."""
    if target.value is None:
        return
    if target.metric.endswith("acc") and not 0 < target.value <= 1:
        raise ConfigError("target.value", f"an accuracy in (0, 1] for target.metric={target.metric}", target.value,
                          "accuracies are fractions: 0.9 means 90 %")
    if target.metric.endswith("loss") and target.value < 0:
        raise ConfigError("target.value", f"a loss ≥ 0 for target.metric={target.metric}", target.value,
                          "losses are never negative")
