"""Learning-rate schedules (the ``schedule`` config group) on ``torch.optim.lr_scheduler``.

Each factory takes the optimizer and the run's total number of steps and returns
a scheduler stepped once per optimizer step (``η_k`` is logged as ``lr``):

* ``constant``: ``η_k = η``;
* ``warmup``: linear warm-up ``η_k = η·(f + (1 − f)·k/W)`` for ``k < W``, then ``η``;
* ``cosine``: optional linear warm-up over ``W`` steps, then
  ``η_k = η_min + (η − η_min)(1 + cos(π (k − W)/(T − W)))/2`` with ``η_min = m·η``;
* ``step``: ``η_k = η·γ^⌊k/S⌋``.

The config files use ``_partial_: true``; the entry point calls the partial with
``(optimizer, total_steps)``. Errors name the field (``schedule.`` is added by the entry point).
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler, SequentialLR, StepLR

from precond.errors import ConfigError


def _check_fraction(key: str, value, low_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        0 < value <= 1 if low_open else 0 <= value <= 1)
    if not ok:
        raise ConfigError(key, "a number in (0, 1]" if low_open else "a number in [0, 1]", value)


def _check_steps(key: str, value, total_steps: int, allow_zero: bool = True) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1) \
            or value >= max(total_steps, 1):
        low = 0 if allow_zero else 1
        raise ConfigError(key, f"an integer in [{low}, steps={total_steps})", value)


def constant(optimizer: Optimizer, total_steps: int) -> LRScheduler:
    """``η_k = η``."""
    return LambdaLR(optimizer, lambda k: 1.0)


def warmup(optimizer: Optimizer, total_steps: int, warmup_steps: int = 100, start_factor: float = 0.01) -> LRScheduler:
    """Linear warm-up from ``start_factor·η`` to ``η`` over ``warmup_steps``, then constant."""
    _check_steps("warmup_steps", warmup_steps, total_steps, allow_zero=False)
    _check_fraction("start_factor", start_factor, low_open=True)
    return LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps)


def cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, start_factor: float = 0.01,
           min_factor: float = 0.0) -> LRScheduler:
    """Optional linear warm-up, then cosine decay to ``min_factor·η`` at the last step."""
    _check_steps("warmup_steps", warmup_steps, total_steps)
    _check_fraction("start_factor", start_factor, low_open=True)
    _check_fraction("min_factor", min_factor, low_open=False)
    base = optimizer.param_groups[0]["lr"]
    decay = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1), eta_min=min_factor * base)
    if warmup_steps == 0:
        return decay
    ramp = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup_steps])


def step(optimizer: Optimizer, total_steps: int, step_size: int = 1000, gamma: float = 0.1) -> LRScheduler:
    """``η_k = η·γ^⌊k/step_size⌋``."""
    if not isinstance(step_size, int) or isinstance(step_size, bool) or step_size < 1:
        raise ConfigError("step_size", "a positive integer", step_size)
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not 0 < gamma <= 1 or math.isnan(gamma):
        raise ConfigError("gamma", "a number in (0, 1]", gamma)
    return StepLR(optimizer, step_size=step_size, gamma=gamma)
