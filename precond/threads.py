"""CPU threads: chosen per run, not inherited from the machine.

torch runs a CPU op on ``torch.get_num_threads()`` threads of an OpenMP pool. Two defaults of
that pool cost precond most of its speed on a machine that is doing something else as well
(a laptop, a shared login node, a CI runner):

* **the pool size** is every core. A matrix product of a small model (an MLP on digits, a
  linear model) is split across threads that then wait on one another at each op's barrier;
  below about 1e7 FLOPs per step one thread is as fast or faster (``scripts/bench_threads.py``
  measures where);
* **the waiting policy** of GNU OpenMP spins: a thread that finished its share busy-waits for
  the others. When another process holds a core, the spinning thread burns the time slice the
  descheduled thread needs, and a step takes ten times as long. Sleeping instead
  (``OMP_WAIT_POLICY=PASSIVE``) has its own price on a quiet machine: waking a thread at every
  op makes two threads up to 3× slower than one on small ops, and costs 1.6× on a tuned
  experiment that spinning threads run fastest. :func:`quiet_waiting` therefore looks before
  torch loads (OpenMP reads the policy once): a busy machine gets sleeping waits, a quiet one a
  short bounded spin. Only the command line does this (``precond-train`` owns its process);
  ``import precond`` as a library changes nothing process-wide.

The ``threads`` config key is ``auto`` or a count (``PRECOND_THREADS`` in the environment sets
its default). ``auto`` picks one thread for a step of fewer than :data:`SMALL_STEP_FLOPS`
forward FLOPs, and otherwise the cores that are free when the run starts: those this process
may use (its CPU affinity: a Slurm allocation, ``taskset``) less those other work keeps busy
(sampled from ``/proc/stat`` for 0.1 s), at most the share a parallel launcher gives its
workers through ``OMP_NUM_THREADS`` (joblib's loky workers get ``cores // workers``).

The thread count changes no algorithm, only how a sum is split, so it is a result-free key:
it may change the last bits of a float32 sum, never a run's meaning.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

from precond.settings import Rule, is_int

#: the environment variable that sets the default of the ``threads`` key
THREADS_ENV = "PRECOND_THREADS"
#: below this many forward FLOPs per training step one thread trains as fast as two or faster, on
#: 2 cores (scripts/bench_threads.py: whole runs, optimizer and evaluation included)
SMALL_STEP_FLOPS = 1e7


#: GNU OpenMP's spin before a waiting thread sleeps, on a machine that is quiet when the run starts: short
#: enough that a process which starts competing later costs ~2× (a full default spin costs ~12×), long
#: enough to keep most of spinning's speed (scripts/bench_threads.py)
BOUNDED_SPIN = 20000


def quiet_waiting() -> str:
    """Choose how OpenMP's waiting threads wait, before torch loads (OpenMP reads it once): the entry point
    (:mod:`precond.run.entry`) calls it first. Returns what it chose.

    * the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``: theirs (``"user"``);
    * another process keeps a core busy now: ``OMP_WAIT_POLICY=PASSIVE``, waiting threads sleep (``"sleep"``);
    * a quiet machine: ``GOMP_SPINCOUNT`` = :data:`BOUNDED_SPIN`, a short spin, then sleep (``"bounded spin"``).
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "user"
    if busy_cores(0.05) >= 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return "sleep"
    os.environ["GOMP_SPINCOUNT"] = str(BOUNDED_SPIN)
    return "bounded spin"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a Slurm allocation, ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


def launcher_share() -> Optional[int]:
    """The threads a parallel launcher gives this worker (``OMP_NUM_THREADS``), when it set one."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


@dataclasses.dataclass(frozen=True)
class ThreadCount(Rule):
    """The ``threads`` key's rule: ``auto``, or an integer from 1 to the available cores
    (a digit string counts: the environment's ``PRECOND_THREADS`` arrives as one)."""

    optional: bool = False

    def expected(self) -> str:
        return f"auto or an integer in [1, {available_cores()}] (the cores available to this process)"

    def accepts(self, value: Any) -> bool:
        if value == "auto":
            return True
        count = _as_count(value)
        return count is not None and 1 <= count <= available_cores()

    def canonical(self, value: Any) -> Any:
        return "auto" if value == "auto" else _as_count(value)

    def refused(self) -> list[Any]:
        return ["abc", available_cores() + 1]


def _as_count(value: Any) -> Optional[int]:
    if is_int(value):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def busy_cores(interval_s: float = 0.1) -> float:
    """How many of this process's cores other work keeps busy now (:func:`busy_between` of two
    ``/proc/stat`` samples ``interval_s`` apart, while this process sleeps); 0 where there is none."""
    try:
        allowed = os.sched_getaffinity(0)
        before = cpu_times(allowed)
        time.sleep(interval_s)
        after = cpu_times(allowed)
    except (OSError, AttributeError, ValueError):
        return 0.0
    return busy_between(before, after)


def busy_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Σ over CPUs of the non-idle share of the ticks between two samples ``{cpu: (idle, total)}``."""
    busy = 0.0
    for cpu, (idle0, total0) in before.items():
        idle1, total1 = after.get(cpu, (idle0, total0))
        if total1 > total0:
            busy += 1 - (idle1 - idle0) / (total1 - total0)
    return busy


def cpu_times(allowed, stat: str = "/proc/stat") -> dict[int, tuple[int, int]]:
    """``{cpu: (idle + iowait ticks, total ticks)}`` of the ``allowed`` CPUs, from ``/proc/stat``."""
    out = {}
    with open(stat, encoding="ascii") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in allowed:
                ticks = [int(x) for x in fields[:8]]
                out[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return out


def choose_threads(setting: Any, step_flops: float, busy: Optional[float] = None) -> int:
    """The thread count of a run: ``setting`` when it is a count. For ``auto``: one thread for a step
    below :data:`SMALL_STEP_FLOPS` forward FLOPs; else the cores that are free now (the available
    ones less those other work keeps busy, ``busy``: measured by :func:`busy_cores` when not given),
    at most the launcher's share, at least one."""
    if setting != "auto":
        return int(setting)
    if step_flops < SMALL_STEP_FLOPS:
        return 1
    cores = available_cores()
    share = launcher_share()
    limit = min(share, cores) if share is not None else cores
    free = cores - round(busy_cores() if busy is None else busy)
    return max(1, min(limit, free))


def apply_threads(count: int) -> None:
    """Size torch's intra-op pool (and, the first time in a process, its inter-op pool, which torch
    lets be set only before any parallel work)."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(count)
    except RuntimeError:  # already set, or parallel work has started: torch keeps the first value
        pass


def forward_flops(model, sample) -> float:
    """FLOPs of the dense and convolutional layers in one forward pass of ``sample`` (a multiply-add
    counts 2: ``2·in·out`` per row of a Linear, ``2·(C_in/groups)·k_h·k_w`` per output element of a
    Conv2d), counted by forward hooks in eval mode without gradients; the model's mode is restored.
    (torch.utils.flop_counter would count every op, but importing it loads torch._dynamo: a second
    of start-up for every run.)"""
    import torch
    from torch import nn

    total = [0.0]

    def count(module, args, out):
        if isinstance(module, nn.Linear):
            total[0] += 2.0 * module.in_features * out.numel()
        else:
            kernel = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
            total[0] += 2.0 * kernel * out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total[0]
