"""What the logged metrics mean: which a target can be set on, and which way each improves."""
from __future__ import annotations

import math
from typing import Optional


def target_metrics(task: str) -> list[str]:
    """The metrics logged at every evaluation, so the ones a target can be set on."""
    names = ["train/loss", "val/loss", "train/batch_loss"]
    return names + (["train/acc", "val/acc"] if task == "classification" else [])


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics (``acc`` in the name) improve upwards; losses, κ, steps and seconds downwards."""
    return "acc" in metric


def target_reached(metric: str, value: Optional[float], target: Optional[float]) -> bool:
    """Loss-like metrics reach the target from above, accuracy-like ones from below."""
    if target is None or value is None or not math.isfinite(value):
        return False
    return value >= target if higher_is_better(metric) else value <= target


def target_text(metric: str, value) -> str:
    """``val/acc ≥ 0.9`` or ``val/loss ≤ 0.02``: a target as people write it."""
    return f"{metric} {'≥' if higher_is_better(metric) else '≤'} {value}"
