"""Learning-rate schedules (the ``schedule`` config group) on ``torch.optim.lr_scheduler``.

Each factory takes the optimizer and the run's total number of steps and returns
a scheduler stepped once per optimizer step (``η_k`` is logged as ``lr``):

* ``constant``: ``η_k = η`` (no scheduler: nothing to step, e.g. 200 times per step in a pack);
* ``warmup``: linear warm-up ``η_k = η·(f + (1 − f)·k/W)`` for ``k < W``, then ``η``;
* ``cosine``: optional linear warm-up over ``W`` steps, then
  ``η_k = η_min + (η − η_min)(1 + cos(π (k − W)/(T − W)))/2`` with ``η_min = m·η``;
* ``step``: ``η_k = η·γ^⌊k/S⌋``.

Each schedule is a settings object (the config group's ``_target_``) whose ``build(optimizer,
total_steps)`` makes the scheduler; the functions below build one from keyword arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR, StepLR

from precond.errors import ConfigError
from precond.settings import Int, Num, Settings, setting


@dataclass(frozen=True)
class ScheduleSpec(Settings):
    """Base of the ``schedule`` config group: ``build(optimizer, total_steps)`` gives the scheduler."""

    def check_steps(self, total_steps: int) -> None:
        """Rules that join this schedule with the run's ``steps`` (ConfigError naming the key)."""

    def build(self, optimizer: Optimizer, total_steps: int) -> Optional[LRScheduler]:
        """The scheduler, or None where the lr never changes."""
        raise NotImplementedError


def _check_warmup(warmup_steps: int, total_steps: int) -> None:
    if warmup_steps >= max(total_steps, 1):
        raise ConfigError("/schedule.warmup_steps", f"fewer than steps={total_steps}", warmup_steps,
                          "lower schedule.warmup_steps or raise steps")


@dataclass(frozen=True)
class Constant(ScheduleSpec):
    """``η_k = η``: no scheduler (a run, and each member of a pack, steps none)."""

    def build(self, optimizer, total_steps):
        return None


@dataclass(frozen=True)
class Warmup(ScheduleSpec):
    """Linear warm-up from ``start_factor·η`` to ``η`` over ``warmup_steps``, then constant."""

    warmup_steps: int = setting(Int(lo=1), 100, doc="W")
    start_factor: float = setting(Num(0, 1, lo_open=True), 0.01, doc="f")

    def check_steps(self, total_steps):
        _check_warmup(self.warmup_steps, total_steps)

    def build(self, optimizer, total_steps):
        self.check_steps(total_steps)
        return LinearLR(optimizer, start_factor=self.start_factor, end_factor=1.0, total_iters=self.warmup_steps)


@dataclass(frozen=True)
class Cosine(ScheduleSpec):
    """Optional linear warm-up, then cosine decay to ``min_factor·η`` at the last step."""

    warmup_steps: int = setting(Int(lo=0), 0, doc="W")
    start_factor: float = setting(Num(0, 1, lo_open=True), 0.01)
    min_factor: float = setting(Num(0, 1), 0.0)

    def check_steps(self, total_steps):
        _check_warmup(self.warmup_steps, total_steps)

    def build(self, optimizer, total_steps):
        self.check_steps(total_steps)
        base = optimizer.param_groups[0]["lr"]
        decay = CosineAnnealingLR(optimizer, T_max=max(total_steps - self.warmup_steps, 1),
                                  eta_min=self.min_factor * base)
        if self.warmup_steps == 0:
            return decay
        ramp = LinearLR(optimizer, start_factor=self.start_factor, end_factor=1.0, total_iters=self.warmup_steps)
        return SequentialLR(optimizer, [ramp, decay], milestones=[self.warmup_steps])


@dataclass(frozen=True)
class Step(ScheduleSpec):
    """``η_k = η·γ^⌊k/step_size⌋``."""

    step_size: int = setting(Int(lo=1), 1000)
    gamma: float = setting(Num(0, 1, lo_open=True), 0.1)

    def check_steps(self, total_steps):
        if self.step_size >= max(total_steps, 1):  # the lr would never change: a schedule that does nothing
            raise ConfigError("/schedule.step_size", f"fewer than steps={total_steps} (the first decay happens at "
                              "step step_size)", self.step_size, "lower schedule.step_size or use schedule=constant")

    def build(self, optimizer, total_steps):
        self.check_steps(total_steps)
        return StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)


def constant(optimizer: Optimizer, total_steps: int) -> None:
    return Constant().build(optimizer, total_steps)


def warmup(optimizer: Optimizer, total_steps: int, **values) -> LRScheduler:
    return Warmup.from_mapping(values).build(optimizer, total_steps)


def cosine(optimizer: Optimizer, total_steps: int, **values) -> LRScheduler:
    return Cosine.from_mapping(values).build(optimizer, total_steps)


def step(optimizer: Optimizer, total_steps: int, **values) -> LRScheduler:
    return Step.from_mapping(values).build(optimizer, total_steps)
