"""Packed training: J runs of one model on one dataset, trained as one stacked model.

Runs of one architecture on one dataset that differ in their seed, learning rate,
optimizer (preconditioner, its scalars, regularizer, its variable and strength) are
independent problems
``min_{p_j} f_j(p_j)``. Stacking their parameters along a leading job axis,
``P = [p_1; …; p_J]``, turns them into one problem with a separable objective
``F(P) = Σ_j f_j(p_j)``, whose gradient has blocks ``∂F/∂p_j = ∇f_j(p_j)``: one backward
pass of ``Σ_j f_j`` gives every run's own gradient. The forward pass is
``vmap(functional_call)`` over the job axis (each job sees its own minibatch), and each
job's slice is stepped by its own composed chain (:mod:`precond.sweep.pack_optimizer`:
jobs with equal chains share one optimizer over their block of the job axis, every
hyperparameter that differs between them a per-job tensor); all links are element-wise,
so each job's slice follows exactly the update it would take alone.

Per job, everything that is not arithmetic on the stacked tensors stays the job's own:
its initialization (the job's solo model is built with its seed, then stacked), its
minibatch order (its own :class:`BatchSampler`), its lr schedule (its own scheduler,
stepped on its solo optimizer and read into the pack), its divergence (a diverged job is
written out and frozen with lr 0 while the others go on), its monitors and checkpoints
(its slice is copied back into its solo model and optimizer first; the members' Lanczos κ are
measured together, :mod:`precond.sweep.pack_curvature`), its records and
summary (the loop's own bookkeeping functions). ``time/train_s`` of a packed job is its
share of the pack's step time: each step's wall time divided by the jobs still training.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from precond.bnp import BNPTransform
from precond.data import BatchSampler, Dataset, StackedBatches, rows_at
from precond.optim import ComposedOptimizer
from precond.run.files import RunLog
from precond.run.loop import (
    CheckpointClock,
    LoopSettings,
    LoopState,
    autocast,
    beat,
    diverged,
    diverged_record,
    evaluate_into,
    evaluation_splits,
    run_summary,
    start_state,
)
from precond.run.progress import make_progress
from precond.sweep.pack_curvature import prepare_pack_curvature
from precond.sweep.pack_optimizer import PackOptimizer, chain_order
from precond.sweep.stacked_model import StackedModel, job_losses


@dataclass
class PackMember:
    """One job of a pack: its own (unstacked) objects and where its records go.

    ``checkpoint`` and ``resume`` are those of :func:`precond.run.loop.train`. All members of a
    pack share the dataset, architecture, steps, batch size and evaluation schedule; a
    resumed pack has every member at the same step.
    """

    model: nn.Module
    optimizer: ComposedOptimizer
    settings: LoopSettings
    runlog: RunLog
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    monitors: tuple = ()
    checkpoint: Optional[Callable[[dict], None]] = None
    resume: Optional[dict] = None
    #: the job's name in progress lines (its run dir below the sweep dir)
    label: str = ""


def pack_label(labels: list[str]) -> str:
    """``pack of 12: job 0, job 1, job 2, job 3, …``: the prefix of a pack's progress lines."""
    shown = ", ".join(labels[:4]) + (", …" if len(labels) > 4 else "")
    return f"pack of {len(labels)}: {shown}" if shown else f"pack of {len(labels)}"


def member_values(states: list, live: list[int], loss_sums: Tensor, labels: list[str]) -> dict:
    """A pack's progress values: how many members still train, and the lowest and highest mean
    minibatch loss since the last record with the job each belongs to (one host sync)."""
    values: dict = {"training": f"{len(live)}/{len(states)}"}
    counts = [states[j].loss_count for j in live]
    if live and all(counts):
        means = (loss_sums[live] / torch.tensor(counts, dtype=loss_sums.dtype, device=loss_sums.device)).tolist()
        low, high = min(range(len(live)), key=means.__getitem__), max(range(len(live)), key=means.__getitem__)
        values[f"lowest batch loss ({labels[live[low]]})"] = means[low]
        values[f"highest ({labels[live[high]]})"] = means[high]
    return values


@torch.no_grad()
def evaluate_stacked(stacked: StackedModel, x: Tensor, y: Tensor, task: str, batch_size: int,
                     precision: str) -> list[dict[str, float]]:
    """:func:`precond.run.loop.evaluate` for every job at once (one batched forward per chunk)."""
    stacked.train(False)
    totals, correct = [0.0] * stacked.jobs, [0] * stacked.jobs
    chunk = max(1, batch_size // stacked.jobs)  # every job's outputs of a chunk: as much memory as one run's
    for start in range(0, x.shape[0], chunk):
        with autocast(precision, x.device):
            out = stacked.forward_shared(x[start:start + chunk])
        out = out.float() if out.dtype == torch.bfloat16 else out
        yb = y[start:start + chunk]
        losses = job_losses(task, out, yb, reduction="sum")  # regression: per-sample means over outputs
        totals = [t + v for t, v in zip(totals, losses.tolist())]
        if task == "classification":
            correct = [c + v for c, v in zip(correct, (out.argmax(dim=-1) == yb).sum(dim=-1).tolist())]
    stacked.train(True)
    n = x.shape[0]
    out = [{"loss": t / n} for t in totals]
    if task == "classification":
        for record, c in zip(out, correct):
            record["acc"] = c / n
    return out


def _evaluate_splits(stacked: StackedModel, data: Dataset, settings: LoopSettings, final: bool) -> list[dict]:
    """:func:`precond.run.loop.evaluate_splits` for every job."""
    records = [{} for _ in range(stacked.jobs)]
    for split, (x, y) in evaluation_splits(data, settings, final).items():
        metrics = evaluate_stacked(stacked, x, y, data.task, settings.eval_batch_size, settings.precision)
        for record, job in zip(records, metrics):
            record.update({f"{split}/{k}": v for k, v in job.items()})
    return records


def train_pack(members: list[PackMember], data: Dataset, should_stop: Optional[Callable[[], bool]] = None
               ) -> list[dict]:
    """Train every member as :func:`precond.run.loop.train` would alone; returns their summaries
    (in the members' order).

    At the end (and when a member diverges) each member's slice is back in its own model and
    optimizer, so the caller writes its files as for a run alone. Members may differ in their
    optimizer chain (:mod:`precond.sweep.pack_optimizer`): they are stacked chain by chain.
    """
    order = chain_order([m.optimizer for m in members])
    summaries = _train_in_chain_order([members[j] for j in order], data, should_stop)
    out: list = [None] * len(members)
    for position, summary in zip(order, summaries):
        out[position] = summary
    return out


def _train_in_chain_order(members: list[PackMember], data: Dataset, should_stop) -> list[dict]:
    """:func:`train_pack` for members whose equal chains are contiguous."""
    settings = members[0].settings
    device = data.x_train.device
    jobs = range(len(members))
    bnp = any(isinstance(link, BNPTransform) for m in members for link in m.optimizer.links)
    stacked = StackedModel([m.model for m in members], record_moments=bnp)
    packed = PackOptimizer([m.optimizer for m in members], stacked.params, stacked)
    samplers = [BatchSampler(data.n_train, settings.batch_size, m.settings.seed, device) for m in members]
    metrics: list[dict] = []

    def record_at(j: int):
        def record(step: int, final: bool) -> dict:
            return {"step": step, "epoch": samplers[j].epoch, "lr": members[j].optimizer.param_groups[0]["lr"],
                    **metrics[j]}
        return record

    def export(j: int) -> None:
        stacked.export(j, members[j].model)
        packed.export(j, members[j].optimizer)

    def save(j: int) -> None:
        if members[j].checkpoint is not None:
            export(j)
            states[j].loss_sum = loss_sums[j].clone()  # the running sum since the last record
            t0 = time.perf_counter()
            members[j].checkpoint(states[j].state_dict(samplers[j]))
            states[j].checkpoint_s += time.perf_counter() - t0

    if members[0].resume is None:
        metrics = _evaluate_splits(stacked, data, settings, final=settings.steps == 0)
        prepare_pack_curvature([m.monitors for m in members], 0, settings.steps == 0, data.task)
        states = [start_state(record_at(j), m.monitors, m.settings, m.runlog, device) for j, m in enumerate(members)]
    else:
        states = [LoopState.from_state_dict(m.resume, samplers[j], device) for j, m in enumerate(members)]
    loss_sums = torch.stack([s.loss_sum for s in states])
    batches = StackedBatches(samplers)
    statuses = ["completed" for _ in jobs]
    active = [True for _ in jobs]
    progress = make_progress(settings.progress, settings.progress_every_s, settings.steps, states[0].step,
                             pack_label([m.label for m in members]))
    clocks = [CheckpointClock(m.settings) for m in members]
    for step in range(states[0].step + 1, settings.steps + 1):
        live = [j for j in jobs if active[j]]
        if not live:
            break
        if should_stop is not None and should_stop():
            for j in live:
                statuses[j] = "interrupted"
                save(j)
            break
        t0 = time.perf_counter()
        idx = batches.next()
        xb, yb = rows_at(data.x_train, idx), rows_at(data.y_train, idx)
        lrs = [m.optimizer.param_groups[0]["lr"] if active[j] else 0.0 for j, m in enumerate(members)]

        def closure():
            with autocast(settings.precision, device):
                losses = job_losses(data.task, stacked.forward(xb), yb)
            losses.sum().backward()  # ∂(Σ_j f_j)/∂p_j = ∇f_j(p_j): every job's own gradient
            return losses

        losses = packed.step(closure, lrs).detach()
        stacked.moments.clear()  # committed by every BNP segment: the next step brings its own
        loss_sums += losses
        _step_schedulers(members, live)
        for j in live:
            states[j].loss_count += 1
            states[j].step = step
        now = beat(settings, step)  # the members share steps, eval_every and so the cadence
        means = (loss_sums / states[live[0]].loss_count).tolist() if now.check_divergence else None  # one sync
        share = (time.perf_counter() - t0) / len(live)
        for j in live:
            states[j].train_s += share
        if now.check_divergence:
            for j in live:
                if diverged(means[j], states[j]):
                    statuses[j], active[j] = "diverged", False
                    members[j].runlog.log(diverged_record(step, float(losses[j]), states[j].train_s))
                    export(j)
                    packed.freeze(j)
            live = [j for j in live if active[j]]
        if now.evaluate and live:
            metrics = _evaluate_splits(stacked, data, settings, now.final)
            for j in live:
                if members[j].monitors:
                    export(j)
            # the members' Lanczos κ from stacked products, left in their monitors (each reports its own)
            prepare_pack_curvature([members[j].monitors for j in live], step, now.final, data.task)
            for j in live:
                states[j].loss_sum = loss_sums[j]
                evaluate_into(states[j], record_at(j), members[j].monitors, members[j].settings, now.final)
                members[j].runlog.log(states[j].last)
            loss_sums.zero_()
        moment = time.monotonic()  # one time for every member: a pack's checkpoints are written at one step
        for j in live:
            if clocks[j].due(step, moment):  # checkpoint_every(_s) may differ (it changes no result)
                save(j)
                clocks[j].written(moment)
        if progress is not None:
            labels = [m.label for m in members]
            progress.advance(step, now.evaluate, lambda: member_values(states, live, loss_sums, labels))
    if progress is not None:
        progress.close()
    for j in jobs:
        if active[j]:
            export(j)
    return [run_summary(states[j], statuses[j], members[j].settings) for j in jobs]


def _step_schedulers(members: list[PackMember], live: list[int]) -> None:
    """Each job's own lr schedule takes its step (read into the pack before the next step)."""
    with warnings.catch_warnings():  # the jobs' own optimizers never step (the pack does): torch would warn
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for j in live:
            if members[j].scheduler is not None:
                members[j].scheduler.step()
