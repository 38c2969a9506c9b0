"""Checkpoints: everything a run needs to continue bit-identically, written atomically.

A checkpoint (``run_dir/checkpoint.pt``) is one ``torch.save`` of a dict of plain
values and tensors (loadable with ``weights_only=True``)::

    format     CHECKPOINT_FORMAT
    step       the last optimizer step taken
    model      model.state_dict()
    optimizer  optimizer.state_dict() (every link keeps its state in optimizer.state; BNP's batch
               moments recorded by a forward are committed within the same step, so none are
               pending between steps)
    scheduler  scheduler.state_dict() or None
    rng        torch's global CPU (and CUDA) generator states and Python's ``random``
    loop       the training loop's bookkeeping (sampler position, timers, target, last record)
    monitors   one state dict per monitor
    wandb_id   the W&B run id, so a resumed run logs into the same W&B run

Resuming from it gives the parameters and metrics the run would have had without
the interruption (same sampler order, same optimizer state, same RNG streams).
"""
from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from precond.settings import is_int

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
#: what a checkpoint must hold to resume from it (one that lacks any is set aside like a damaged one)
CHECKPOINT_KEYS = ("format", "step", "loop", "model", "optimizer", "scheduler", "monitors", "rng", "wandb_id")
LOOP_KEYS = {"step", "last", "diverge_above", "loss_sum", "sampler"}


def rng_state() -> dict:
    """The global random states a run may draw from (torch CPU, every initialized CUDA device, Python)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state) -> tuple:
    """``random.getstate()`` is nested tuples; a round trip through torch.save may give lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``.

    A crash or a full disk leaves either the old file or the new one, never a truncated one;
    the temporary file is removed when the write fails.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:
                raise _as_os_error(err, tmp) from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _as_os_error(err: RuntimeError, path: Path) -> Exception:
    """torch.save reports a failed write as ``RuntimeError: [enforce fail at inline_container.cc…] … file write
    failed``: give it back as the OSError it is (ENOSPC when the disk has no space left, else EIO), so the run ends
    with the one line every other write failure gets. Other RuntimeErrors are returned unchanged."""
    text = str(err)
    if "file write failed" not in text and "inline_container" not in text:
        return err
    try:
        full = shutil.disk_usage(path.parent).free < 1024 * 1024
    except OSError:
        full = False
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, os.strerror(code) + " (torch.save: " + text.strip().splitlines()[-1][:120] + ")", str(path))


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointError(Exception):
    """A checkpoint file exists but cannot be used (damaged, or written by another format)."""


def load_checkpoint(run_dir: str | Path, steps: Optional[int] = None) -> Optional[dict]:
    """The checkpoint in ``run_dir`` (tensors on the CPU), or None when there is none.

    Raises :class:`CheckpointError` when the file is unreadable, of another format, or (``steps``: the run's
    budget) at a step beyond the run's last: a run cannot have written it, so it is damaged.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, a pickle error, ...: all mean "cannot resume from it"
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {str(err)[:100]})") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a format-{CHECKPOINT_FORMAT} precond checkpoint")
    missing = sorted(set(CHECKPOINT_KEYS) - set(checkpoint))
    loop = checkpoint.get("loop")
    if missing or not isinstance(loop, dict) or sorted(LOOP_KEYS - set(loop)):
        what = missing if missing else (sorted(LOOP_KEYS - set(loop)) if isinstance(loop, dict) else ["loop"])
        raise CheckpointError(f"{path} lacks {what}")
    if not is_int(checkpoint["step"]) or checkpoint["step"] != loop["step"]:
        raise CheckpointError(f"{path} has an inconsistent step ({checkpoint['step']!r} vs loop {loop['step']!r})")
    if is_int(steps) and checkpoint["step"] > steps:
        raise CheckpointError(f"{path} is at step {checkpoint['step']}, beyond the run's steps={steps}: damaged")
    return checkpoint
