"""The training loop: flat, device-resident, honest timing.

``time/train_s`` counts optimizer steps only: evaluation and monitors
(curvature, sparsity, ...) are excluded, and on CUDA the clock is read after a
synchronize so asynchronous kernels are charged to the step that queued them.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from precond.data import BatchSampler, Dataset
from precond.metrics import time_to_target
from precond.run.files import RunLog
from precond.run.monitors import Monitor
from precond.run.progress import make_progress
from precond.settings import SEED, Choice, Flag, Int, Nested, Num, Settings, Text, setting

#: steps between non-finite-loss checks (each check synchronizes with the device)
DIVERGENCE_CHECK_EVERY = 10
#: fp32: plain; bf16: forward and loss under bfloat16 autocast (weights and optimizer state stay float32)
PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device):
    """The forward pass's precision context: bfloat16 autocast for ``bf16`` (CPU and CUDA), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Target(Settings):
    """The ``target`` config node: steps/seconds-to-target are counted until ``metric`` reaches ``value``
    (loss-like metrics from above, accuracy-like from below); null value: no target."""

    metric: str = setting(Text(), "val/loss", doc="a metric logged at every evaluation")
    value: Optional[float] = setting(Num(optional=True), None)


@dataclass(frozen=True)
class LoopSettings(Settings):
    """Settings of one run's loop; their names are the top-level config keys."""

    steps: int = setting(Int(lo=1, hi=10**9), 1000, doc="optimizer steps (minibatches)")
    batch_size: int = setting(Int(lo=1, hi=10**8), 64)
    eval_every: int = setting(Int(lo=1, hi=10**9), 100, doc="steps between evaluations")
    seed: int = setting(SEED, 0, doc="training seed (init, batch order)")
    target: Target = setting(Nested(Target), Target())
    eval_batch_size: int = setting(Int(lo=1, hi=10**8), 4096, doc="chunk size for evaluation only")
    eval_train_samples: int = setting(Int(lo=1, hi=10**9), 10_000, doc="training samples behind train/loss")
    divergence_factor: float = setting(Num(1, lo_open=True, allow_inf=True), 1e6,
                                       fix="a run is diverged when its loss exceeds this many times the initial loss")
    progress: bool = setting(Flag(), True, doc="a step bar on a terminal, a log line every progress_every_s otherwise")
    progress_every_s: float = setting(Num(0, lo_open=True), 30.0, doc="seconds between progress lines (not a tty)")
    #: None: by wall time (checkpoint_every_s); N > 0: every N steps; 0: only on interrupt
    checkpoint_every: Optional[int] = setting(Int(lo=0, optional=True), None,
                                              fix="null: every checkpoint_every_s seconds, N: every N steps, "
                                                  "0: only on interrupt")
    checkpoint_every_s: float = setting(Num(0, lo_open=True), 60.0,
                                        doc="with checkpoint_every=null: seconds between checkpoints")
    #: fp32 | bf16 (autocast of forward and loss; see :func:`autocast`)
    precision: str = setting(Choice(PRECISIONS), "fp32",
                             fix="bf16 runs the forward pass under bfloat16 autocast (float32 weights)")


def loss_function(task: str) -> Callable[[Tensor, Tensor], Tensor]:
    """MSE for regression (mean over samples and outputs), cross-entropy for classification."""
    return F.mse_loss if task == "regression" else F.cross_entropy


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn, x: Tensor, y: Tensor, task: str, batch_size: int,
             precision: str = "fp32") -> dict[str, float]:
    """Mean loss (and accuracy for classification) over a whole split, in chunks, eval mode."""
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        with autocast(precision, x.device):
            out = model(x[start:start + batch_size])
        out = out.float() if out.dtype == torch.bfloat16 else out
        yb = y[start:start + batch_size]
        total += float(loss_fn(out, yb, reduction="sum"))
        if task == "classification":
            correct += int((out.argmax(dim=1) == yb).sum())
    model.train(was_training)
    n = x.shape[0]
    if task == "regression":
        total /= y[0].numel()  # mse_loss(sum) sums over outputs too; report the per-element mean
    metrics = {"loss": total / n}
    if task == "classification":
        metrics["acc"] = correct / n
    return metrics


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluation_splits(data: Dataset, settings: LoopSettings, final: bool) -> dict[str, tuple[Tensor, Tensor]]:
    """What an evaluation measures: ``train`` = the first ``eval_train_samples`` training samples (a
    fixed subset keeps evaluation cheap on large datasets), ``val`` whole, ``test`` only when ``final``."""
    out = {}
    for split, (x, y) in data.splits().items():
        if split == "test" and not final:
            continue
        if split == "train":
            x, y = x[:settings.eval_train_samples], y[:settings.eval_train_samples]
        out[split] = (x, y)
    return out


def evaluate_splits(model: nn.Module, data: Dataset, settings: LoopSettings, final: bool) -> dict[str, float]:
    """``<split>/loss`` (and ``<split>/acc``) on each of :func:`evaluation_splits`."""
    loss_fn = loss_function(data.task)
    record = {}
    for split, (x, y) in evaluation_splits(data, settings, final).items():
        for k, v in evaluate(model, loss_fn, x, y, data.task, settings.eval_batch_size, settings.precision).items():
            record[f"{split}/{k}"] = v
    return record


def run_monitors(monitors: tuple[Monitor, ...], step: int, final: bool) -> tuple[dict, float]:
    """The monitors' metrics at this step and the seconds they took (kept out of train time)."""
    t0 = time.perf_counter()
    metrics: dict = {}
    for monitor in monitors:
        metrics.update(monitor(step, final))
    return metrics, time.perf_counter() - t0


@dataclass
class LoopState:
    """The loop's bookkeeping between two steps: with the model, optimizer, scheduler, monitors
    and RNG states, all a run needs to continue exactly where it stopped.

    ``loss_sum``/``loss_count`` accumulate the minibatch losses since the last record (the sum
    stays on the device: no host sync per step); ``diverge_above`` is ``divergence_factor`` × the
    initial training loss; ``last`` is the last evaluation record; ``resumed_at`` lists the steps
    the run was resumed from.
    """

    step: int
    last: dict
    diverge_above: float
    loss_sum: Tensor
    loss_count: int = 0
    train_s: float = 0.0
    monitor_s: float = 0.0
    checkpoint_s: float = 0.0
    #: (step, target metric, train seconds) at every evaluation: the time to target is read from it
    target_trace: list = field(default_factory=list)
    resumed_at: list = field(default_factory=list)

    def state_dict(self, sampler: BatchSampler) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "sampler": sampler.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict, sampler: BatchSampler, device: torch.device) -> LoopState:
        sampler.load_state_dict(state["sampler"])
        values = {f.name: state[f.name] for f in fields(cls) if f.name in state}
        values["loss_sum"] = values["loss_sum"].to(device)
        loop = cls(**values)
        loop.resumed_at = [*loop.resumed_at, loop.step]
        return loop


@dataclass(frozen=True)
class Beat:
    """What a run does after optimizer step ``step``: the one cadence of a run alone and of a pack."""

    step: int
    final: bool
    evaluate: bool  #: every ``eval_every`` steps and at the last step
    check_divergence: bool  #: at evaluations and every DIVERGENCE_CHECK_EVERY steps (a host sync each)


def beat(settings: LoopSettings, step: int) -> Beat:
    final = step == settings.steps
    evaluate = step % settings.eval_every == 0 or final
    return Beat(step, final, evaluate, evaluate or step % DIVERGENCE_CHECK_EVERY == 0)


class CheckpointClock:
    """When a run writes its checkpoint (never at the last step: the run's files follow).

    ``checkpoint_every``: None → at the first step ``checkpoint_every_s`` seconds or more after
    the run (re)started or last wrote one, so a SIGKILL loses at most that much training (plus
    one step) and a short run pays for none; N > 0 → every N steps; 0 → only on interrupt.
    Where a checkpoint is written changes no result: resume is bit-identical from any step.
    """

    def __init__(self, settings: LoopSettings):
        self.settings = settings
        self.last = time.monotonic()

    def due(self, step: int, now: Optional[float] = None) -> bool:
        """Whether to write after ``step`` (``now``: the caller's monotonic time, shared by a pack's members)."""
        every = self.settings.checkpoint_every
        if step == self.settings.steps:
            return False
        if every is not None:
            return every > 0 and step % every == 0
        return (time.monotonic() if now is None else now) - self.last >= self.settings.checkpoint_every_s

    def written(self, now: Optional[float] = None) -> None:
        self.last = time.monotonic() if now is None else now


def diverged(mean_loss: float, state: LoopState) -> bool:
    """NaN/inf, or above ``divergence_factor`` × the initial training loss (``not <=`` also catches NaN)."""
    return not mean_loss <= state.diverge_above


def progress_values(state: LoopState) -> dict:
    """What a progress line shows: the mean minibatch loss since the last record, the last val/loss, val/acc."""
    values = {"batch loss": float(state.loss_sum) / state.loss_count} if state.loss_count else {}
    values.update({k: v for k, v in state.last.items() if k in ("val/loss", "val/acc") and v is not None})
    return values


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    settings: LoopSettings,
    runlog: RunLog,
    monitors: tuple[Monitor, ...] = (),
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    checkpoint: Optional[Callable[[dict], None]] = None,
    resume: Optional[dict] = None,
    label: Optional[str] = None,
) -> dict:
    """Train for ``settings.steps`` minibatch steps; log every ``eval_every`` steps (and at 0 and the end).

    Each record has ``lr`` (the learning rate of the next step, after the ``scheduler``,
    which is stepped once per optimizer step), ``train/batch_loss`` (mean minibatch loss
    since the last record), ``train/loss`` (eval-mode loss on the first
    ``eval_train_samples`` training samples), ``val/*`` (whole split), ``test/*`` (last
    record only), and the monitors' metrics.

    ``should_stop`` is polled before every step (e.g. a :class:`precond.run.interrupts.StopRequest`).
    ``checkpoint`` is called with the loop's state (:meth:`LoopState.state_dict`) when
    :func:`checkpoint_due` says so and when the run is interrupted; ``resume`` is such a state:
    the loop continues from its step without re-evaluating it (the caller restores the model,
    optimizer, scheduler, monitors and RNG states saved with it).

    Returns the summary fields of the run: ``status`` (``completed``; ``diverged``
    when the minibatch loss becomes NaN/inf or exceeds ``divergence_factor`` × the
    initial training loss; ``interrupted`` when ``should_stop`` said so), the metrics
    of the last evaluation (``last_eval_step``), ``steps`` (the steps taken),
    ``steps_to_target`` and ``seconds_to_target`` (None when not reached).
    """
    device = data.x_train.device
    loss_fn = loss_function(data.task)
    sampler = BatchSampler(data.n_train, settings.batch_size, settings.seed, device)
    model.train()

    def record_at(step: int, final: bool) -> dict:
        """The evaluation record at ``step`` (``train/batch_loss`` is added by the caller)."""
        record = {"step": step, "epoch": sampler.epoch, "lr": optimizer.param_groups[0]["lr"]}
        record.update(evaluate_splits(model, data, settings, final))
        return record

    def save(state: LoopState) -> None:
        if checkpoint is not None:
            t0 = time.perf_counter()
            checkpoint(state.state_dict(sampler))
            state.checkpoint_s += time.perf_counter() - t0

    if resume is not None:
        state = LoopState.from_state_dict(resume, sampler, device)
    else:
        state = start_state(record_at, monitors, settings, runlog, device)
    status = "completed"
    progress = make_progress(settings.progress, settings.progress_every_s, settings.steps, state.step, label)
    clock = CheckpointClock(settings)
    for step in range(state.step + 1, settings.steps + 1):
        if should_stop is not None and should_stop():
            status = "interrupted"
            save(state)
            break
        t0 = time.perf_counter()
        idx = sampler.next()
        xb, yb = data.x_train[idx], data.y_train[idx]

        def closure():
            optimizer.zero_grad(set_to_none=True)
            with autocast(settings.precision, device):
                batch_loss = loss_fn(model(xb), yb)
            batch_loss.backward()
            return batch_loss

        loss = optimizer.step(closure).detach()
        if scheduler is not None:
            scheduler.step()
        state.loss_sum += loss
        state.loss_count += 1
        state.step = step
        now = beat(settings, step)
        if now.check_divergence:
            _sync(device)
        state.train_s += time.perf_counter() - t0
        if now.check_divergence and diverged(float(state.loss_sum) / state.loss_count, state):
            status = "diverged"
            runlog.log(diverged_record(step, float(loss), state.train_s))
            break
        if now.evaluate:
            evaluate_into(state, record_at, monitors, settings, now.final)
            runlog.log(state.last)
        if clock.due(step):
            save(state)
            clock.written()
        if progress is not None:
            progress.advance(step, now.evaluate, lambda: progress_values(state))
    if progress is not None:
        progress.close()
    return run_summary(state, status, settings)


def run_summary(state: LoopState, status: str, settings: LoopSettings) -> dict:
    """The summary fields of a run that ended with ``status`` (see :func:`train`)."""
    summary = {k: v for k, v in state.last.items() if "/" in k}
    summary.update({
        "status": status, "steps": state.step, "last_eval_step": state.last["step"],
        **time_to_target(state.target_trace, settings.target.metric, settings.target.value,
                         held=status != "diverged"),
        "target_metric": settings.target.metric, "target_value": settings.target.value,
        "time/checkpoint_s": state.checkpoint_s,
    })
    if state.resumed_at:
        summary["resumed_at"] = state.resumed_at
    return summary


def diverged_record(step: int, last_loss: float, train_s: float) -> dict:
    """The record logged when a run stops as diverged."""
    return {"step": step, "train/batch_loss": last_loss, "time/train_s": train_s, "diverged": True}


def start_state(record_at, monitors, settings: LoopSettings, runlog: RunLog, device) -> LoopState:
    """The step-0 record (logged) and the state of a run that has taken no step."""
    last = record_at(0, final=settings.steps == 0)
    metrics, monitor_s = run_monitors(monitors, 0, final=False)
    last.update(metrics, **{"time/train_s": 0.0}, **({"time/monitor_s": monitor_s} if monitors else {}))
    runlog.log(last)
    # a run has diverged when its loss is non-finite or this far above the initial training loss
    state = LoopState(step=0, last=last, diverge_above=settings.divergence_factor * max(last["train/loss"], 1e-12),
                      loss_sum=torch.zeros((), device=device), monitor_s=monitor_s)
    _trace(state, settings)
    return state


def _trace(state: LoopState, settings: LoopSettings) -> None:
    value = state.last.get(settings.target.metric)
    state.target_trace.append((state.step, None if value is None else float(value), state.train_s))


def evaluate_into(state: LoopState, record_at, monitors, settings: LoopSettings, final: bool) -> None:
    """Evaluate at ``state.step`` into ``state.last``, then the target bookkeeping (not train time)."""
    last = record_at(state.step, final)
    last["train/batch_loss"] = float(state.loss_sum) / state.loss_count
    state.loss_sum, state.loss_count = torch.zeros_like(state.loss_sum), 0
    metrics, seconds = run_monitors(monitors, state.step, final)
    state.monitor_s += seconds
    last.update(metrics)
    last["time/train_s"] = state.train_s
    if monitors:
        last["time/monitor_s"] = state.monitor_s
    state.last = last
    _trace(state, settings)


