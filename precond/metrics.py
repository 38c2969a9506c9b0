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


#: how a time to target is resolved between two evaluations (stated in every report)
TIME_TO_TARGET_RULE = (
    "reach and hold: the first moment after which every evaluation to the end of the run is on the target "
    "side, interpolated linearly in the metric between the last evaluation off target and the first on it "
    "(steps and training seconds alike); a run that ends off target, or diverged, has none")


def _crossing(before: tuple, after: tuple, target: float) -> tuple[float, float]:
    """(step, seconds) where the metric crosses ``target`` on the segment between two evaluations."""
    (s0, v0, t0), (s1, v1, t1) = before, after
    if v0 is None or v1 is None or not (math.isfinite(v0) and math.isfinite(v1)) or v0 == v1:
        return float(s1), float(t1)
    share = min(max((v0 - target) / (v0 - v1), 0.0), 1.0)
    return s0 + share * (s1 - s0), t0 + share * (t1 - t0)


def time_to_target(trace: list, metric: str, target: Optional[float], held: bool = True) -> dict:
    """``steps_to_target``/``seconds_to_target`` (reach and hold, see :data:`TIME_TO_TARGET_RULE`) and
    ``steps_to_first_hit``/``seconds_to_first_hit`` (the first crossing) from ``trace``, the evaluations
    ``[(step, value, train_seconds), ...]`` in step order. ``held=False`` (a diverged run): no hold."""
    out = {"steps_to_target": None, "seconds_to_target": None, "steps_to_first_hit": None,
           "seconds_to_first_hit": None}
    on = [target_reached(metric, value, target) for _, value, _ in trace]
    if True in on:
        i = on.index(True)
        hit = (0.0, 0.0) if i == 0 else _crossing(trace[i - 1], trace[i], target)
        out["steps_to_first_hit"], out["seconds_to_first_hit"] = hit
    if held and on and on[-1]:
        i = len(on) - 1
        while i > 0 and on[i - 1]:
            i -= 1
        hold = (0.0, 0.0) if i == 0 else _crossing(trace[i - 1], trace[i], target)
        out["steps_to_target"], out["seconds_to_target"] = hold
    return out


def after_warmup(summary: dict, warmup_steps: int) -> dict:
    """A method that needs a warm-up (BNP's statistics-only steps) reports its times counted from the
    end of the warm-up beside the totals: ``steps_to_target_after_warmup`` (0 when reached within it)."""
    out = {"warmup_steps": warmup_steps}
    for key in ("steps_to_target", "steps_to_first_hit"):
        value = summary.get(key)
        out[f"{key}_after_warmup"] = None if value is None else max(value - warmup_steps, 0.0)
    return out
