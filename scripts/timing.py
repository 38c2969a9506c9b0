"""Timing helpers shared by the benchmark scripts: honest medians over interleaved rounds."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the kernels it launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(jobs: dict[str, Callable[[], object]], device: torch.device, rounds: int,
                        warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each job; every round runs every job once, so drift hits all alike."""
    for job in jobs.values():
        for _ in range(warmup):
            job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            sync(device)
            t0 = time.perf_counter()
            job()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}
