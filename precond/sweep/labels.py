"""Words for metric keys on axes, legends and page titles: a reader sees "validation accuracy" and
"κ(PᵀHP) (in z)", not ``val/acc`` and ``curvature/z/kappa``. Keys without a name of their own keep
their key, so a new metric is still labelled."""
from __future__ import annotations

#: exact keys → words
NAMES = {
    "val/acc": "validation accuracy",
    "val/loss": "validation loss",
    "train/loss": "training loss",
    "train/acc": "training accuracy",
    "steps_to_target": "steps to target",
    "steps_to_target_after_warmup": "steps to target after the BNP warm-up",
    "seconds_to_target": "seconds to target",
    "time/train_s": "training seconds",
    "reg/sparsity": "sparsity (fraction of exact zeros)",
    "reg/penalty_share": "penalty share of the step",
    "step": "step",
}
#: ``curvature/<space>/<quantity>`` → words; the space says in which variable the Hessian is taken
QUANTITIES = {
    "kappa": "κ", "kappa_plus": "κ⁺ (nonzero eigenvalues)", "lam_max": "λmax", "lam_min": "λmin",
    "null_dim": "null-space dimension",
}
SPACES = {"p": "of H (in p)", "z": "of PᵀHP (in z)"}


def metric_label(key: str) -> str:
    """``key`` in words: ``curvature/z/kappa`` → "κ of PᵀHP (in z)", ``val/acc`` → "validation accuracy"."""
    if key in NAMES:
        return NAMES[key]
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "curvature" and parts[2] in QUANTITIES and parts[1] in SPACES:
        return f"{QUANTITIES[parts[2]]} {SPACES[parts[1]]}"
    return key


def log_scale(metric: str) -> bool:
    """Losses, condition numbers and the largest eigenvalue span decades: plotted (and coloured) on a log scale."""
    return "loss" in metric or "kappa" in metric or "lam_max" in metric
