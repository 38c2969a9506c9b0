"""Which runs can be trained together as one stacked model (:mod:`precond.sweep.pack_training`).

Two runs can share a pack when they train the same model on the same data with the same
loop: their resolved configs are equal except for *per-job* values — the seed, the learning
rate and the whole optimizer (preconditioner and regularization: each job's slice of the
stacked model is stepped by its own chain, :mod:`precond.sweep.pack_optimizer`) — and for
*bookkeeping* values that do not enter the computation at all. :func:`pack_key` returns the
rest of the config as a key (runs with equal keys are packed) or the reason a run must train
alone.
"""
from __future__ import annotations

import copy
import json
from typing import Optional

from precond.run.files import RESULT_FREE_KEYS

#: values that may differ inside a pack: seeds (init, batch order), the lr and the optimizer chain
#: (jobs with equal chains share one stacked optimizer; the others get one per chain)
PER_JOB = ("seed", "lr", "preconditioner", "regularization")
#: values that do not enter the computation: the result-free keys, plus names and the target (which
#: changes what is recorded, steps-to-target, but not how any member trains)
BOOKKEEPING = ("name", "stage", "arm", "target", "dataset.target_metric", "dataset.target_value",
               *RESULT_FREE_KEYS)


#: preconditioners whose state is a matrix over a job's parameters (precond.matrix_preconditioners): they train alone
NON_DIAGONAL = ("full_matrix", "kronecker")
#: any other preconditioner that is not one of precond's own diagonal ones: its state has no job axis
PACKABLE = ("sgd", "adagrad", "rmsprop", "adam", "bnp")

#: models the stacked model batches explicitly (:class:`~precond.sweep.stacked_model.StackedModel`):
#: Sequentials of dense, convolutional, normalization, pooling and activation layers
EXPLICITLY_BATCHED = ("precond.models.LinearModel", "precond.models.MLPModel", "precond.models.CNNModel")


def alone_reason(config: dict) -> Optional[str]:
    """Why a run with this resolved config cannot be packed, or None when it can."""
    batched = config.get("model", {}).get("_target_") in EXPLICITLY_BATCHED
    name = config.get("preconditioner", {}).get("name")
    if name in NON_DIAGONAL:
        return (f"preconditioner={name} keeps matrices over a job's own parameters, which a stacked model's "
                "job axis would mix")
    if name is not None and name not in PACKABLE:
        return (f"preconditioner {name} is not one of precond's element-wise preconditioners {list(PACKABLE)}: "
                "its state has no job axis")
    if name == "bnp" and not batched:
        return "preconditioner=bnp needs a model the pack batches explicitly (linear, mlp, cnn)"
    regularization = config.get("regularization", {})
    if regularization.get("name") == "gradnorm" and regularization.get("backend") == "double_backward":
        return "regularization.backend=double_backward differentiates one model's gradient graph"
    if config.get("normalization", {}).get("name") == "batchnorm" and not batched:
        return "BatchNorm's running statistics need a model the pack batches explicitly (linear, mlp, cnn)"
    if config.get("compile"):
        return "compile=true compiles one model at a time"
    if config.get("channels_last"):
        return "channels_last sets one model's memory format"
    return None


def _drop(config: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(leaf, None)


def pack_key(config: dict) -> tuple[Optional[str], Optional[str]]:
    """``(key, None)`` for a packable run, ``(None, reason)`` for one that trains alone.

    The key is the config without its per-job and bookkeeping values.
    """
    reason = alone_reason(config)
    if reason is not None:
        return None, reason
    rest = copy.deepcopy(config)
    for dotted in (*PER_JOB, *BOOKKEEPING):
        _drop(rest, dotted)
    return json.dumps(rest, sort_keys=True, default=str), None
