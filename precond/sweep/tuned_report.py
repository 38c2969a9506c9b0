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

from precond.metrics import TIME_TO_TARGET_RULE, higher_is_better, target_text
from precond.run.files import write_text_atomically
from precond.sweep.grid_metrics import NEAR_OPTIMAL, SPARSITY, grid_values, pareto_level, point_of
from precond.sweep.runs import ReportError, RunRecord, load_runs, save_figure
from precond.sweep.verdicts import RULE, Claim, Verdict, count_states, judge_all

SELECTION = "selection.json"
HEATMAP = "grid_heatmap.png"
PARETO_PLOT = "pareto.png"
SENSITIVITY_PLOT = "sensitivity.png"
#: what a sensitivity curve reads from each confirmation run (the final target metric is added in front)
SENSITIVITY_METRICS = ("steps_to_target", "steps_to_target_after_warmup", "reg/sparsity")
VERDICTS = "verdicts.json"
#: a fastest arm that holds the target within fewer evaluation intervals is resolved too coarsely
MIN_INTERVALS = 20
KAPPA_COLUMNS = ("curvature/p/kappa", "curvature/z/kappa", "curvature/p/kappa_plus", "curvature/p/lam_max",
                 "curvature/z/lam_max", "curvature/p/lam_min", "curvature/p/null_dim", "reg/sparsity",
                 "reg/penalty_share")


def _runs_by_stage(runs: list[RunRecord], stage: str) -> dict:
    """``{arm: [runs]}`` of one stage, in job order."""
    out: dict = {}
    for run in runs:
        if run.summary.get("stage") == stage and run.summary.get("arm") is not None:
            out.setdefault(run.summary["arm"], []).append(run)
    return out


def judge_claims(selection: dict, confirmation: dict, tuning: Optional[dict] = None) -> list[Verdict]:
    """Every claim of ``selection`` judged on exactly the confirmation seeds it declares (runs of other
    seeds in the dir are not looked at), Holm-adjusted over the experiment's empirical claims. Claims with
    ``stage: tuning`` are judged on each arm's grid values per declared tuning seed (``tuning``: its runs)."""
    seeds = list(selection.get("confirmation_seeds", []))
    by_seed = {arm: {r.summary.get("seed"): r.summary for r in runs if r.summary.get("seed") in seeds}
               for arm, runs in confirmation.items()}
    invalid = {arm: e["invalid"] for arm, e in selection["arms"].items() if e.get("invalid")}
    tuning_seeds = list(selection.get("tuning_seeds", []))
    claims = [Claim(**c) for c in selection.get("claims", [])]
    levels = tuple(sorted({pareto_level(side.metric) for c in claims for side in c.sides
                           if not isinstance(side, float) and pareto_level(side.metric) is not None}))
    grids = {arm: grid_values([r.summary for r in runs if r.summary.get("seed") in tuning_seeds],
                              selection["arms"][arm]["grid"], runs[0].summary.get("target_metric", "val/loss"), levels)
             for arm, runs in (tuning or {}).items() if arm in selection["arms"] and runs}
    return judge_all(claims, by_seed, seeds, invalid, tuning=(grids, tuning_seeds))


def _verdict_table(verdicts: list[Verdict]) -> str:
    lines = ["| claim | verdict | effect (median, ≥95 % interval) | for / against / tied | p (Holm) |",
             "|---|---|---|---|---|"]
    for v in verdicts:
        effect = v.effect
        if effect:
            shown = effect_text(effect)
        else:
            shown = "—"
        p = "—" if v.p_value is None else f"{v.p_value:.3g} ({v.p_adjusted:.3g})"
        lines.append(f"| {v.claim} | **{v.verdict}** | {shown} | {v.wins} / {v.losses} / {v.ties} of {v.n} | {p} |")
    return "\n".join(lines)


def effect_text(effect: dict) -> str:
    """An effect as people read it: ×ratio (than/better) or ±difference, with its interval and margin."""
    def one(x):
        if x in ("inf", "-inf"):
            return ("∞" if x == "inf" else ("0" if effect["scale"] == "ratio" else "−∞"))
        return f"×{math.exp(x):.3g}" if effect["scale"] == "ratio" else f"{x + 0.0:+.3g}"  # + 0.0: no "-0"

    low, high = effect["ci"]
    return f"{one(effect['estimate'])} [{one(low)}, {one(high)}] (margin {effect['margin']:g})"


def headline(verdicts: list) -> str:
    """``3 holds, 1 fails, 0 equivalent, 2 inconclusive, 1 invalid; 2 identities (not counted as support)``."""
    c = count_states(verdicts)
    return (f"{c['holds']} holds, {c['fails']} fails, {c['equivalent']} equivalent, {c['inconclusive']} "
            f"inconclusive, {c['invalid']} invalid; {c['identity']} identities (not counted as support)")


def too_easy(confirmation: dict) -> Optional[str]:
    """A warning when the fastest arm needs fewer than :data:`MIN_INTERVALS` evaluation intervals:
    steps to target are then resolved too coarsely to separate methods."""
    fastest = None
    for arm, runs in confirmation.items():
        steps = [r.summary.get("steps_to_target") for r in runs if r.summary.get("status") == "completed"]
        if steps and all(isinstance(x, (int, float)) for x in steps):
            median = statistics.median(steps)
            interval = next((r.metrics[1]["step"] - r.metrics[0]["step"] for r in runs if len(r.metrics) > 1), None)
            if interval and (fastest is None or median / interval < fastest[1]):
                fastest = (arm, median / interval)
    if fastest is not None and fastest[1] < MIN_INTERVALS:
        return (f"too easy to resolve: the fastest arm ({fastest[0]}) holds the target after {fastest[1]:.1f} "
                f"evaluation intervals (< {MIN_INTERVALS}); raise the target or evaluate more often")
    return None


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
            chosen = f"**invalid**: {entry.get('invalid') or entry.get('error', 'no eligible point')}"
        else:
            chosen = ", ".join(f"{k}={v}" + (" ⚠ edge of grid" if k in entry["at_edge"] else "")
                               for k, v in entry["chosen"].items()) or "(no grid)"
        grid = "; ".join(f"{k} ∈ {{{', '.join(f'{x:g}' if isinstance(x, float) else str(x) for x in v)}}}"
                         for k, v in entry["grid"].items())
        lines.append(f"| {arm} | {chosen} | {grid} | {entry['tuning_seeds'] or 'none (one grid point)'} |")
    return "\n".join(lines)


def _confirmation_table(confirmation: dict, metric: str, target: str) -> str:
    kappas = [k for k in KAPPA_COLUMNS if any(r.summary.get(k) for rs in confirmation.values() for r in rs)]
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
    seeds = list(selection.get("confirmation_seeds", []))
    confirmation = {arm: [r for r in rs if r.summary.get("seed") in seeds] for arm, rs in confirmation.items()}
    verdicts = judge_claims(selection, confirmation, tuning)
    write_text_atomically(sweep_dir / VERDICTS, json.dumps([v.as_dict() for v in verdicts], indent=2) + "\n")
    warning = too_easy(confirmation)
    text = (f"# {sweep_dir.name}\n\n## Selection\n\nRule: {selection['rule']}. Tuning seeds "
            f"{selection['tuning_seeds']}, confirmation seeds {selection['confirmation_seeds']}. "
            f"Time to target: {TIME_TO_TARGET_RULE}.\n\n"
            f"{_selection_table(selection)}\n\n## Confirmation (chosen setting, fresh seeds)\n\n"
            f"{_confirmation_table(confirmation, metric, target)}\n\n"
            + (f"⚠ {warning}\n\n" if warning else "")
            + (f"## Sensitivity\n\n{sensitivity_text(confirmation, selection, metric)}\n\n"
               f"![sensitivity]({SENSITIVITY_PLOT})\n\n" if selection.get("sensitivity") else "")
            + f"## Verdicts\n\n{headline(verdicts)}.\n\n"
            + (_verdict_table(verdicts) + "\n\n" if verdicts else "")
            + ("".join(f"- {v.line()}\n" for v in verdicts) or "- (no claims declared)\n")
            + f"\nRule: {RULE}.\n"
            + "\n![lr sensitivity](lr_sensitivity.png)\n![confirmation](confirmation.png)\n"
            + (f"![grid heat map]({HEATMAP})\n" if _heatmap_arms(selection) else "")
            + (f"![pareto]({PARETO_PLOT})\n" if _pareto_levels(selection) else "")
            + ("\nNot in the tables:" + "".join(f"\n- {p}" for p in problems) + "\n" if problems else ""))
    write_text_atomically(sweep_dir / "comparison.md", text)
    (sweep_dir / "comparison.png").unlink(missing_ok=True)  # a plain report's plot from an interrupted stage
    plot_lr_sensitivity(tuning, selection, metric, sweep_dir / "lr_sensitivity.png")
    plot_confirmation(confirmation, metric, sweep_dir / "confirmation.png", first.get("target_value"))
    (sweep_dir / HEATMAP).unlink(missing_ok=True)
    plot_grid_heatmaps(tuning, selection, metric, sweep_dir / HEATMAP)
    (sweep_dir / PARETO_PLOT).unlink(missing_ok=True)
    plot_pareto(tuning, selection, metric, sweep_dir / PARETO_PLOT)
    (sweep_dir / SENSITIVITY_PLOT).unlink(missing_ok=True)
    plot_sensitivity(confirmation, selection, metric, sweep_dir / SENSITIVITY_PLOT)
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
        ineligible = {p["point"].get("lr") for p in selection["arms"].get(arm, {}).get("points", [])
                      if not p.get("eligible", True)}
        crossed = [(lr, statistics.fmean(ok)) for lr in lrs if lr in ineligible
                   and (ok := [v for v in points[lr] if v is not None and math.isfinite(v)])]
        if crossed:
            ax.scatter(*zip(*crossed), marker="x", s=50, color=color, linewidths=1.5)
        chosen = (selection["arms"].get(arm, {}).get("chosen") or {}).get("lr")
        if chosen is not None and any(lr == chosen for lr, _ in means):
            ax.scatter([chosen], [dict(means)[chosen]], s=120, facecolors="none", edgecolors=color, linewidths=2)
    ax.set_xscale("log")
    if "loss" in metric:
        ax.set_yscale("log")
    ax.set_xlabel("lr")
    ax.set_ylabel(f"final {metric}")
    ax.set_title("lr sensitivity (tuning runs; circle = chosen; × = ineligible; missing = diverged/failed)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _heatmap_arms(selection: dict) -> list[str]:
    """Arms searched over two keys with ≥ 2 values each (``lr × λ``): their grids are drawn as heat maps."""
    return [arm for arm, e in selection["arms"].items()
            if e.get("tuning_seeds") and len(e["grid"]) == 2 and all(len(v) >= 2 for v in e["grid"].values())]


def plot_grid_heatmaps(tuning: dict, selection: dict, metric: str, path: Path) -> Optional[Path]:
    """Per arm with a two-key grid: the median over tuning seeds of the final ``metric`` on the grid (one colour
    scale for all panels), the chosen point boxed, the near-optimal cells (:data:`NEAR_OPTIMAL`, median over
    seeds of the per-seed fraction in the title) dotted, and the slope of log(best second key) on log(first)."""
    arms = [a for a in _heatmap_arms(selection) if tuning.get(a)]
    if not arms:
        return None
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(arms), figsize=(5.2 * len(arms) + 1.4, 4.6), squeeze=False,
                             layout="constrained")
    panels = []
    for arm in arms:
        entry = selection["arms"][arm]
        keys = list(entry["grid"])
        rows, cols = entry["grid"][keys[0]], entry["grid"][keys[1]]
        cells: dict = {}
        for run in tuning[arm]:
            point = point_of(run.summary, entry["grid"])
            value = run.summary.get(metric) if run.summary.get("status") == "completed" else None
            if point is not None and isinstance(value, (int, float)) and math.isfinite(value):
                cells.setdefault(point, []).append(value)
        grid = np.full((len(cols), len(rows)), np.nan)
        for (a, b), values in cells.items():
            grid[cols.index(b), rows.index(a)] = statistics.median(values)
        per_seed = grid_values([r.summary for r in tuning[arm]], entry["grid"], metric)
        fractions = [v["grid/near_optimal_fraction"] for v in per_seed.values() if v["status"] == "completed"]
        slopes = [v["grid/best_value_slope"] for v in per_seed.values()
                  if v["status"] == "completed" and v["grid/best_value_slope"] is not None]
        panels.append((arm, keys, rows, cols, grid, fractions, slopes, entry.get("chosen") or {}))
    finite = np.concatenate([p[4][np.isfinite(p[4])] for p in panels])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cmap = "viridis" if higher_is_better(metric) else "viridis_r"
    for ax, (arm, keys, rows, cols, grid, fractions, slopes, chosen) in zip(axes[0], panels):
        image = ax.imshow(grid, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(rows)), [f"{v:g}" for v in rows], fontsize=7, rotation=45)
        ax.set_yticks(range(len(cols)), [f"{v:g}" for v in cols], fontsize=7)
        ax.set_xlabel(keys[0])
        ax.set_ylabel(keys[1], fontsize=8)
        if np.isfinite(grid).any():
            best = np.nanmax(grid) if higher_is_better(metric) else np.nanmin(grid)
            width = NEAR_OPTIMAL["acc"] if higher_is_better(metric) else None
            for j in range(len(cols)):
                for i in range(len(rows)):
                    value = grid[j, i]
                    near = np.isfinite(value) and (value >= best - width if width is not None
                                                   else value <= best * NEAR_OPTIMAL["loss_ratio"])
                    if np.isfinite(value):
                        ax.text(i, j, f"{value:.3g}", ha="center", va="center", fontsize=6,
                                color="white" if not near else "black", fontweight="bold" if near else None)
        if chosen.get(keys[0]) in rows and chosen.get(keys[1]) in cols:
            ax.add_patch(plt.Rectangle((rows.index(chosen[keys[0]]) - 0.5, cols.index(chosen[keys[1]]) - 0.5), 1, 1,
                                       fill=False, edgecolor="red", linewidth=2))
        fraction = f"{statistics.median(fractions):.2f}" if fractions else "—"
        slope = f"{statistics.median(slopes):+.2f}" if slopes else "—"
        ax.set_title(f"{arm}\nnear-optimal fraction {fraction}\nslope of log best {keys[1].split('.')[-1]} on log "
                     f"{keys[0].split('.')[-1]}: {slope}", fontsize=8)
    fig.colorbar(image, ax=list(axes[0]), label=f"final {metric} (median over tuning seeds)", shrink=0.85)
    within = NEAR_OPTIMAL["acc"] if higher_is_better(metric) else f"×{NEAR_OPTIMAL['loss_ratio']}"
    fig.suptitle(f"tuning grids (red box = chosen; bold = within {within} of the best)", fontsize=9)
    save_figure(fig, path)
    return path


def _pareto_levels(selection: dict) -> list[float]:
    """The sparsities at which claims read the Pareto fronts (``grid/pareto@S``)."""
    return sorted({level for c in selection.get("claims", []) for side in (c.get("better"), c.get("than"))
                   for metric in ([side.get("metric")] if isinstance(side, dict) else [c.get("metric")])
                   if isinstance(metric, str) and (level := pareto_level(metric)) is not None})


def plot_pareto(tuning: dict, selection: dict, metric: str, path: Path) -> Optional[Path]:
    """Final ``reg/sparsity`` against final ``metric`` of every tuning run, per arm (light dots), the per-point
    medians over seeds (dots) and each arm's Pareto front of those medians (the best ``metric`` at sparsity ≥ s,
    a step line); vertical lines at the sparsities the claims read."""
    levels = _pareto_levels(selection)
    if not levels:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    palette = _palette(plt, len(tuning))
    better = higher_is_better(metric)
    for k, (arm, runs) in enumerate(tuning.items()):
        color, style = palette[k]
        cells: dict = {}
        for run in runs:
            sp, value = run.summary.get(SPARSITY), run.summary.get(metric)
            point = point_of(run.summary, selection["arms"].get(arm, {}).get("grid", {}))
            if run.summary.get("status") == "completed" and isinstance(sp, (int, float)) and \
                    isinstance(value, (int, float)) and point is not None:
                cells.setdefault(point, []).append((sp, value))
                ax.scatter([sp], [value], color=color, s=6, alpha=0.15)
        medians = sorted((statistics.median(p[0] for p in v), statistics.median(p[1] for p in v))
                         for v in cells.values())
        if not medians:
            continue
        ax.scatter(*zip(*medians), color=color, s=16, label=arm)
        front, best = [], -math.inf if better else math.inf
        for sp, value in reversed(medians):  # from the sparsest: the best value at sparsity ≥ sp
            best = max(best, value) if better else min(best, value)
            front.append((sp, best))
        ax.step(*zip(*reversed(front)), where="post", color=color, linestyle=style, lw=1.5)
    for level in levels:
        ax.axvline(level, color="black", linestyle=":", lw=1)
    lows = [y for arm_points in ax.collections for _, y in arm_points.get_offsets()]
    if lows and better:  # a grid point that destroyed the model (chance accuracy) would flatten the fronts
        top = max(lows)
        ax.set_ylim(max(min(lows), top - 0.15) - 0.005, top + 0.005)
    ax.set_xlabel("final reg/sparsity (fraction of exact zeros)")
    ax.set_ylabel(f"final {metric}")
    ax.set_title("sparsity–accuracy Pareto fronts over each arm's lr × λ grid (dots: median over tuning seeds)",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def sensitivity_curves(confirmation: dict, selection: dict, metric: str) -> list[tuple]:
    """``[(key, series, shown metric, [(value, median, [per-seed values])])]`` of the declared sensitivity curves;
    steps to target count a run that never held it as missing (the number that held is in the text)."""
    out = []
    for key, series in (selection.get("sensitivity") or {}).items():
        for name, arms in series.items():
            for shown in (metric, *SENSITIVITY_METRICS):
                points = []
                for arm in arms:
                    x = selection["arms"].get(arm, {}).get("overrides", {}).get(key)
                    values = [r.summary.get(shown) for r in confirmation.get(arm, [])
                              if r.summary.get("status") == "completed"]
                    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
                    if x is not None:
                        points.append((x, statistics.median(values) if values else None, values))
                if any(p[1] for p in points):  # a curve that is missing or zero everywhere says nothing
                    out.append((key, name, shown, sorted(points, key=lambda p: p[0])))
    return out


def sensitivity_text(confirmation: dict, selection: dict, metric: str) -> str:
    """One sentence per curve: the range of the median over the values tried, and where its ends are."""
    lines = []
    for key, name, shown, points in sensitivity_curves(confirmation, selection, metric):
        valued = [(x, m, v) for x, m, v in points if m is not None]
        low = min(valued, key=lambda p: p[1])
        high = max(valued, key=lambda p: p[1])
        seeds = len(selection.get("confirmation_seeds", [])) or max(len(v) for _, _, v in points)
        counted = (f"runs that held the target per value: {', '.join(str(len(v)) for _, _, v in points)} of {seeds}"
                   if shown.startswith("steps_to_target") else f"{seeds} seeds per value")
        ratio = f", ×{high[1] / low[1]:.3g} over the range" if low[1] > 0 else ""
        lines.append(f"- {name}, {key} ∈ {{{', '.join(f'{x:g}' for x, _, _ in points)}}}: median {shown} from "
                     f"{low[1]:.4g} ({key}={low[0]:g}) to {high[1]:.4g} ({key}={high[0]:g}){ratio}; {counted}.")
    return "\n".join(lines) or "- (no confirmation run completed)"


def plot_sensitivity(confirmation: dict, selection: dict, metric: str, path: Path) -> Optional[Path]:
    """Per swept key and read metric a panel: every confirmation run (dots) and the median (line) against the
    key's value (log axis when the values are positive and span ≥ 10×), a line per series."""
    curves = sensitivity_curves(confirmation, selection, metric)
    if not curves:
        return None
    panels = list(dict.fromkeys((key, shown) for key, _, shown, _ in curves))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.8), squeeze=False)
    series = list(dict.fromkeys(name for _, name, _, _ in curves))
    palette = _palette(plt, len(series))
    for ax, (key, shown) in zip(axes[0], panels):
        xs_all = []
        for key2, name, shown2, points in curves:
            if (key2, shown2) != (key, shown):
                continue
            color, style = palette[series.index(name)]
            for x, _, values in points:
                ax.scatter([x] * len(values), values, color=color, s=8, alpha=0.4)
            line = [(x, m) for x, m, _ in points if m is not None]
            ax.plot(*zip(*line), color=color, linestyle=style, marker="o", ms=3, label=name)
            xs_all += [x for x, _, _ in points]
        if xs_all and min(xs_all) > 0 and max(xs_all) >= 10 * min(xs_all):
            ax.set_xscale("log")
        elif xs_all and min(xs_all) >= 0 and max(xs_all) > 10 * max(min(x for x in xs_all if x > 0), 1e-12) and \
                any(x > 0 for x in xs_all):
            ax.set_xscale("symlog", linthresh=min(x for x in xs_all if x > 0))
        ax.set_xlabel(key)
        ax.set_ylabel(shown if shown != metric else f"final {metric}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("sensitivity (confirmation runs; line = median over seeds)", fontsize=10)
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


def plot_confirmation(confirmation: dict, metric: str, path: Path, target: Optional[float] = None) -> Path:
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
        if target is not None:
            a.axhline(target, color="black", linestyle=":", lw=1, label="target" if a is axes[1] else None)
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
    verdict_rows = [[v["claim"], v["verdict"], v.get("reason", ""), v.get("wins"), v.get("losses"), v.get("ties"),
                     v.get("n"), json.dumps(v.get("effect")), v.get("p_value"), v.get("p_adjusted")] for v in verdicts]
    return {"selection": (["arm", "chosen", "at_edge", "grid", "tuning_seeds", "confirmation_seeds"], sel_rows),
            "verdicts": (["claim", "verdict", "reason", "wins", "losses", "ties", "n", "effect", "p_value",
                          "p_adjusted"], verdict_rows)}


REPORT_IMAGES = {"lr_sensitivity": "lr_sensitivity.png", "confirmation": "confirmation.png", "grid_heatmap": HEATMAP,
                 "pareto": PARETO_PLOT, "sensitivity": SENSITIVITY_PLOT}
