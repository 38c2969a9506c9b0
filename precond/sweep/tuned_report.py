"""The report of a tuned experiment (``hydra/sweeper=tuned``): selection, confirmation, verdicts.

Reads ``selection.json`` (written by the sweeper) and the runs' files in the sweep dir; writes

* ``comparison.md`` — per arm the chosen hyperparameters (⚠ at the edge of the grid), the
  confirmation results (mean ± std, steps and seconds to target, κ where measured) and one
  verdict line per claim;
* ``verdicts.json`` — ``[{"claim", "verdict", "rule", "evidence"}]``;
* ``lr_sensitivity.png`` — final target metric vs lr per arm (every tuning seed, mean line);
* ``confirmation.png`` — the target metric vs step and vs training seconds of the
  confirmation runs (mean, band = min–max over seeds).
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Optional

from precond.metrics import target_text
from precond.run.files import write_text_atomically
from precond.sweep.runs import ReportError, RunRecord, load_runs, save_figure
from precond.sweep.verdicts import Claim, Verdict, judge

SELECTION = "selection.json"
VERDICTS = "verdicts.json"
KAPPA_COLUMNS = ("curvature/p/kappa", "curvature/z/kappa", "curvature/p/kappa_plus", "curvature/p/lam_min",
                 "curvature/p/null_dim")


def _runs_by_stage(runs: list[RunRecord], stage: str) -> dict:
    """``{arm: [runs]}`` of one stage, in job order."""
    out: dict = {}
    for run in runs:
        if run.summary.get("stage") == stage and run.summary.get("arm") is not None:
            out.setdefault(run.summary["arm"], []).append(run)
    return out


def judge_claims(selection: dict, confirmation: dict) -> list[Verdict]:
    """Every claim of ``selection`` judged on the confirmation runs (``{arm: [RunRecord]}``)."""
    by_seed = {arm: {r.summary.get("seed"): r.summary for r in runs} for arm, runs in confirmation.items()}
    return [judge(Claim(**c), by_seed) for c in selection.get("claims", [])]


def _pm(values: list) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4g} ± {std:.2g}"


def _selection_table(selection: dict) -> str:
    lines = ["| arm | chosen | grid searched | tuning seeds |", "|---|---|---|---|"]
    for arm, entry in selection["arms"].items():
        if entry.get("chosen") is None:
            chosen = f"none ({entry.get('error', 'every point failed')})"
        else:
            chosen = ", ".join(f"{k}={v}" + (" ⚠ edge of grid" if k in entry["at_edge"] else "")
                               for k, v in entry["chosen"].items()) or "(no grid)"
        grid = "; ".join(f"{k} ∈ {{{', '.join(f'{x:g}' if isinstance(x, float) else str(x) for x in v)}}}"
                         for k, v in entry["grid"].items())
        lines.append(f"| {arm} | {chosen} | {grid} | {entry['tuning_seeds']} |")
    return "\n".join(lines)


def _confirmation_table(confirmation: dict, metric: str, target: str) -> str:
    kappas = [k for k in KAPPA_COLUMNS if any(r.summary.get(k) is not None for rs in confirmation.values() for r in rs)]
    lines = [f"| arm | completed | final {metric} | reached {target} | steps to target | seconds to target |"
             + "".join(f" {k} |" for k in kappas), "|---|---|---|---|---|---|" + "---|" * len(kappas)]
    for arm, runs in confirmation.items():
        done = [r.summary for r in runs if r.summary.get("status") == "completed"]
        hit = [s for s in done if s.get("steps_to_target") is not None]
        lines.append(f"| {arm} | {len(done)}/{len(runs)} | {_pm([s.get(metric) for s in done])} | "
                     f"{len(hit)}/{len(done)} | {_pm([s['steps_to_target'] for s in hit])} | "
                     f"{_pm([s['seconds_to_target'] for s in hit])} |"
                     + "".join(f" {_pm([s.get(k) for s in done])} |" for k in kappas))
    return "\n".join(lines)


def tuned_report(sweep_dir: str | Path, quiet: bool = False) -> list[Verdict]:
    """Write the tuned experiment's report into ``sweep_dir``; return the verdicts."""
    sweep_dir = Path(sweep_dir)
    try:
        selection = json.loads((sweep_dir / SELECTION).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"{sweep_dir / SELECTION} is unreadable ({err})") from None
    problems: list[str] = []
    runs = load_runs(sweep_dir, problems)
    confirmation = _runs_by_stage(runs, "confirmation")
    tuning = _runs_by_stage(runs, "tuning")
    first = next((r.summary for r in runs if r.summary.get("target_metric")), {})
    metric = first.get("target_metric", "val/loss")
    target = target_text(metric, first.get('target_value'))
    verdicts = judge_claims(selection, confirmation)
    write_text_atomically(sweep_dir / VERDICTS, json.dumps([v.as_dict() for v in verdicts], indent=2) + "\n")
    text = (f"# {sweep_dir.name}\n\n## Selection\n\nRule: {selection['rule']}. Tuning seeds "
            f"{selection['tuning_seeds']}, confirmation seeds {selection['confirmation_seeds']}.\n\n"
            f"{_selection_table(selection)}\n\n## Confirmation (chosen setting, fresh seeds)\n\n"
            f"{_confirmation_table(confirmation, metric, target)}\n\n## Verdicts\n\n"
            + ("".join(f"- {v.line()}\n" for v in verdicts) or "- (no claims declared)\n")
            + (f"\nRule: {verdicts[0].rule}.\n" if verdicts else "")
            + "\n![lr sensitivity](lr_sensitivity.png)\n![confirmation](confirmation.png)\n"
            + ("\nNot in the tables:" + "".join(f"\n- {p}" for p in problems) + "\n" if problems else ""))
    write_text_atomically(sweep_dir / "comparison.md", text)
    (sweep_dir / "comparison.png").unlink(missing_ok=True)  # a plain report's plot from an interrupted stage
    plot_lr_sensitivity(tuning, selection, metric, sweep_dir / "lr_sensitivity.png")
    plot_confirmation(confirmation, metric, sweep_dir / "confirmation.png")
    if not quiet:
        print(text)
    return verdicts


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lr_sensitivity(tuning: dict, selection: dict, metric: str, path: Path) -> Optional[Path]:
    """Final ``metric`` vs lr per arm: a dot per tuning run (diverged/failed runs at the top), the
    mean over seeds as a line, the chosen lr circled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9 if len(tuning) > 6 else 7, 4.5))
    palette = _palette(plt, len(tuning))
    for k, (arm, runs) in enumerate(tuning.items()):
        color, style = palette[k]
        points: dict = {}
        for run in runs:
            lr = _lr_of(run)
            value = run.summary.get(metric) if run.summary.get("status") == "completed" else None
            if lr is not None:
                points.setdefault(lr, []).append(value)
        if not points:
            continue
        lrs = sorted(points)
        for lr in lrs:
            ok = [v for v in points[lr] if v is not None and math.isfinite(v)]
            ax.scatter([lr] * len(ok), ok, color=color, s=12, alpha=0.6)
        means = [(lr, statistics.fmean(v)) for lr in lrs
                 if (v := [x for x in points[lr] if x is not None and math.isfinite(x)]) and len(v) == len(points[lr])]
        if means:
            ax.plot(*zip(*means), color=color, linestyle=style, label=arm)
        chosen = (selection["arms"].get(arm, {}).get("chosen") or {}).get("lr")
        if chosen is not None and any(lr == chosen for lr, _ in means):
            ax.scatter([chosen], [dict(means)[chosen]], s=120, facecolors="none", edgecolors=color, linewidths=2)
    ax.set_xscale("log")
    if "loss" in metric:
        ax.set_yscale("log")
    ax.set_xlabel("lr")
    ax.set_ylabel(f"final {metric}")
    ax.set_title("lr sensitivity (tuning runs; circle = chosen; missing = diverged/failed)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _palette(plt, n: int) -> list[tuple]:
    """Distinct (color, linestyle) pairs: tab10 up to 10 arms, then tab10 again with dashes."""
    colors = plt.get_cmap("tab10").colors
    return [(colors[k % 10], "-" if k < 10 else "--") for k in range(n)]


def _lr_of(run: RunRecord) -> Optional[float]:
    for override in run.summary.get("overrides", []):
        if override.startswith("lr="):
            try:
                return float(override[3:])
            except ValueError:
                return None
    return None


def plot_confirmation(confirmation: dict, metric: str, path: Path) -> Path:
    """``metric`` vs step and vs ``time/train_s`` of the confirmation runs, per arm."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    palette = _palette(plt, len(confirmation))
    for k, (arm, runs) in enumerate(confirmation.items()):
        color, style = palette[k]
        for a, x_key in zip(axes, ("step", "time/train_s")):
            curves = [[(r[x_key], r[metric]) for r in run.metrics if r.get(metric) is not None and x_key in r]
                      for run in runs]
            curves = [c for c in curves if c]
            for i, curve in enumerate(curves):
                a.plot(*zip(*curve), color=color, linestyle=style, alpha=0.8, lw=1,
                       label=f"{arm} (n={len(curves)})" if i == 0 else None)
    for a, x_label in zip(axes, ("step", "training seconds (time/train_s)")):
        a.set_xlabel(x_label)
        if "loss" in metric:
            a.set_yscale("log")
        a.grid(True, which="both", alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[0].set_ylabel(metric)
    fig.suptitle(f"confirmation runs: {metric} (one line per seed)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def summary_tables(sweep_dir: str | Path) -> dict:
    """The selection and verdict tables of a reported tuned sweep, as ``name → (columns, rows)``."""
    sweep_dir = Path(sweep_dir)
    selection = json.loads((sweep_dir / SELECTION).read_text(encoding="utf-8"))
    verdicts = json.loads((sweep_dir / VERDICTS).read_text(encoding="utf-8"))
    sel_rows = [[arm, json.dumps(e.get("chosen")), ",".join(e.get("at_edge", [])), json.dumps(e["grid"]),
                 json.dumps(e["tuning_seeds"]), json.dumps(e["confirmation_seeds"])]
                for arm, e in selection["arms"].items()]
    verdict_rows = [[v["claim"], v["verdict"], v["evidence"]["wins"], v["evidence"]["losses"], v["evidence"]["pairs"],
                     v["rule"]] for v in verdicts]
    return {"selection": (["arm", "chosen", "at_edge", "grid", "tuning_seeds", "confirmation_seeds"], sel_rows),
            "verdicts": (["claim", "verdict", "seeds_for", "seeds_against", "seeds", "rule"], verdict_rows)}


REPORT_IMAGES = {"lr_sensitivity": "lr_sensitivity.png", "confirmation": "confirmation.png"}
