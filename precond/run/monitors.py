"""Training monitors: extra metrics computed at evaluation steps, their time kept out of train time.

A monitor is called as ``monitor(step, final)`` at every evaluation (``final`` is
True at the last step of the run, whatever its number) and returns a dict of
metrics to add to that step's record (empty when it has nothing to say). Its
``state_dict()`` goes into the run's checkpoint, so a resumed run continues its
cumulative values.
"""
from __future__ import annotations

import logging
import time
from typing import Protocol

import torch
from torch import Tensor, nn

from precond.curvature import CurvatureResult, CurvatureSettings, measure_curvature, require_dense_fits
from precond.normalization import hidden_matrix_kappas

log = logging.getLogger(__name__)


class Monitor(Protocol):
    def __call__(self, step: int, final: bool) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RegularizationMonitor:
    """``reg/penalty`` and ``reg/sparsity`` of the optimizer's penalty at every evaluation, and (gradient-norm
    penalty) ``reg/penalty_share``: the mean over the steps since the last evaluation of the penalty term's
    share of the step, from the optimizer's running totals less those read last time."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.read = (0.0, 0)  # the running totals at the last evaluation

    def __call__(self, step: int, final: bool) -> dict:
        metrics = self.optimizer.regularization_metrics()
        totals = self.optimizer.penalty_share_totals()
        if metrics and totals is not None and totals[1] > self.read[1]:  # metrics: λ > 0 (a pack steps λ = 0 too)
            metrics["reg/penalty_share"] = (totals[0] - self.read[0]) / (totals[1] - self.read[1])
            self.read = totals
        return metrics

    def state_dict(self) -> dict:
        return {"share_read": list(self.read)}

    def load_state_dict(self, state: dict) -> None:
        self.read = tuple(state.get("share_read", (0.0, 0)))


#: samples of the fixed training subset on which the per-layer κ(ĤᵀĤ) is computed
LAYER_SAMPLES = 1024


class CurvatureMonitor:
    """Every ``settings.every`` steps and at the last step: κ in each space and per-layer κ(ĤᵀĤ).

    The batches are fixed once (the first ``batches × batch_size`` samples of a
    seeded permutation of the training split), so measurements at different
    steps see the same operator up to the change in parameters. Per-layer
    ``κ(ĤᵀĤ)`` uses a fixed subset of up to ``LAYER_SAMPLES`` training inputs. Logs
    ``curvature/<space>/{lam_max, lam_min, kappa, matvecs, converged}``,
    ``curvature/layer/<name>/kappa_hidden[_plus]`` and the cumulative ``time/curvature_s``.
    ``z`` is skipped until the optimizer has state (``P`` undefined before step 1).

    :attr:`prepared` holds results measured for this monitor from outside, keyed by space (a pack
    measures its members' Lanczos κ together, :mod:`precond.sweep.pack_curvature`); the next call
    reports them instead of measuring, with their ``seconds`` (the member's share) in ``time/curvature_s``.
    """

    def __init__(self, model: nn.Module, loss_fn, x_train: Tensor, y_train: Tensor, optimizer,
                 settings: CurvatureSettings, default_batch_size: int, seed: int = 0):
        self.model, self.loss_fn, self.optimizer, self.settings = model, loss_fn, optimizer, settings
        if settings.method == "dense":  # refuse before training, not at the first measurement
            require_dense_fits(sum(p.numel() for p in model.parameters() if p.requires_grad))
        size = settings.batch_size or default_batch_size
        n = min(x_train.shape[0], size * settings.batches)
        perm = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(seed)).to(x_train.device)
        xs, ys = x_train[perm[:n]], y_train[perm[:n]]
        self.batches = [(xs[i:i + size], ys[i:i + size]) for i in range(0, n, size)]
        # κ(ĤᵀĤ) needs more samples than features, whatever the training batch size
        self.layer_inputs = x_train[perm[:min(x_train.shape[0], LAYER_SAMPLES)]]
        self.seconds = 0.0
        self.prepared: dict[str, CurvatureResult] = {}
        if "z" in settings.spaces and not optimizer.preconditioner.exposes_P:
            log.warning("curvature in z is not measured: this preconditioner is a black box and exposes no P "
                        "(κ in p is measured as asked)")

    def due(self, step: int, final: bool) -> bool:
        """Whether a call at this step measures."""
        skip_start = step == 0 and not final and not self.settings.at_start
        return (step % self.settings.every == 0 or final) and not skip_start

    def spaces_now(self) -> tuple[str, ...]:
        """The spaces a measurement now covers: ``z`` only once ``P`` exists and is exposed."""
        z_ready = bool(self.optimizer.state) and self.optimizer.preconditioner.exposes_P
        return tuple(space for space in self.settings.spaces if space != "z" or z_ready)

    def __call__(self, step: int, final: bool) -> dict:
        if not self.due(step, final):
            self.prepared.clear()
            return {}
        t0 = time.perf_counter()
        metrics: dict = {}
        s = self.settings
        shared_s = 0.0
        for space in self.spaces_now():
            res = self.prepared.pop(space, None)
            if res is not None:
                shared_s += res.seconds
            else:
                res = measure_curvature(self.model, self.loss_fn, self.batches, optimizer=self.optimizer,
                                        space=space, tol=s.tol, max_matvecs=s.max_matvecs, method=s.method,
                                        bn_mode=s.bn_mode, hvp_mode=s.hvp_mode)
            metrics.update(res.as_metrics())
        self.prepared.clear()
        if s.layers:
            for name, values in hidden_matrix_kappas(self.model, self.layer_inputs, bn_mode=s.bn_mode).items():
                for key, value in values.items():
                    metrics[f"curvature/layer/{name}/{key}"] = value
        self.seconds += time.perf_counter() - t0 + shared_s
        metrics["time/curvature_s"] = self.seconds
        return metrics

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.seconds = float(state["seconds"])
