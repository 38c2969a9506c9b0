"""The report's views of whole grids and curves: heat maps of two-key tuning grids, sparsity–accuracy
Pareto fronts, and sensitivity curves (with one sentence per curve).

* ``grid_heatmap.png`` — per arm searched over two keys (``lr × λ``): the median final target metric
  over tuning seeds on the grid, the chosen point boxed, near-optimal cells in bold;
* ``pareto.png`` — every tuning run's final ``reg/sparsity`` against its final target metric, and each
  arm's front (the best metric at sparsity ≥ s), with the sparsities that claims read
  (:mod:`precond.sweep.grid_metrics`);
* ``sensitivity.png`` — the confirmation runs of arms that differ in one key's value against that
  value (``hydra.sweeper.sensitivity``), a panel per key and read metric.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Optional

from precond.metrics import higher_is_better
from precond.settings import is_finite_number, is_number
from precond.sweep.grid_metrics import NEAR_OPTIMAL, SPARSITY, grid_values, pareto_level, point_of
from precond.sweep.labels import log_scale, metric_label
from precond.sweep.runs import palette, pyplot, save_figure

HEATMAP = "grid_heatmap.png"
PARETO_PLOT = "pareto.png"
SENSITIVITY_PLOT = "sensitivity.png"
#: panels per row in a faceted figure (readable at page width)
PANELS_PER_ROW = 3
#: what a sensitivity curve reads from each confirmation run (the final target metric is added in front)
SENSITIVITY_METRICS = ("steps_to_target", "steps_to_target_after_warmup", "reg/sparsity")


def heatmap_arms(selection: dict) -> list[str]:
    """Arms searched over two keys with ≥ 2 values each (``lr × λ``): their grids are drawn as heat maps."""
    return [arm for arm, e in selection["arms"].items()
            if e.get("tuning_seeds") and len(e["grid"]) == 2 and all(len(v) >= 2 for v in e["grid"].values())]


def plot_grid_heatmaps(tuning: dict, selection: dict, metric: str, path: Path) -> Optional[Path]:
    """Per arm with a two-key grid: the median over tuning seeds of the final ``metric`` on the grid (one colour
    scale for all panels), the chosen point boxed, the near-optimal cells (:data:`NEAR_OPTIMAL`, median over
    seeds of the per-seed fraction in the title) dotted, and the slope of log(best second key) on log(first)."""
    arms = [a for a in heatmap_arms(selection) if tuning.get(a)]
    if not arms:
        return None
    import numpy as np

    plt = pyplot()
    cols = min(len(arms), PANELS_PER_ROW)
    rows_of_panels = math.ceil(len(arms) / cols)
    fig, axes = plt.subplots(rows_of_panels, cols, figsize=(5.2 * cols + 1.4, 4.6 * rows_of_panels), squeeze=False,
                             layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(arms):]:
        ax.set_visible(False)
    panels = []
    for arm in arms:
        entry = selection["arms"][arm]
        keys = list(entry["grid"])
        rows, cols = entry["grid"][keys[0]], entry["grid"][keys[1]]
        cells: dict = {}
        for run in tuning[arm]:
            point = point_of(run.summary, entry["grid"])
            value = run.summary.get(metric) if run.summary.get("status") == "completed" else None
            if point is not None and is_finite_number(value):
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
    norm = colour_norm(metric, finite)
    cmap = plt.get_cmap("viridis" if higher_is_better(metric) else "viridis_r")
    for ax, (arm, keys, rows, cols, grid, fractions, slopes, chosen) in zip(flat, panels):
        image = ax.imshow(grid, origin="lower", cmap=cmap, norm=norm, aspect="auto")
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
                                color=text_colour(cmap(norm(value))), fontweight="bold" if near else None)
        if chosen.get(keys[0]) in rows and chosen.get(keys[1]) in cols:
            ax.add_patch(plt.Rectangle((rows.index(chosen[keys[0]]) - 0.5, cols.index(chosen[keys[1]]) - 0.5), 1, 1,
                                       fill=False, edgecolor="red", linewidth=2))
        fraction = f"{statistics.median(fractions):.2f}" if fractions else "—"
        slope = f"{statistics.median(slopes):+.2f}" if slopes else "—"
        ax.set_title(f"{arm}\nnear-optimal fraction {fraction}\nslope of log best {keys[1].split('.')[-1]} on log "
                     f"{keys[0].split('.')[-1]}: {slope}", fontsize=8)
    fig.colorbar(image, ax=flat[:len(arms)], label=f"final {metric_label(metric)} (median over tuning seeds)",
                 shrink=0.85)
    within = NEAR_OPTIMAL["acc"] if higher_is_better(metric) else f"×{NEAR_OPTIMAL['loss_ratio']}"
    fig.suptitle(f"tuning grids: median final {metric_label(metric)} (red box = chosen; bold = within {within} of "
                 "the best)", fontsize=9)
    save_figure(fig, path)
    return path


def pareto_levels(selection: dict) -> list[float]:
    """The sparsities at which claims read the Pareto fronts (``grid/pareto@S``)."""
    return sorted({level for c in selection.get("claims", []) for side in (c.get("better"), c.get("than"))
                   for metric in ([side.get("metric")] if isinstance(side, dict) else [c.get("metric")])
                   if isinstance(metric, str) and (level := pareto_level(metric)) is not None})


def colour_norm(metric: str, values):
    """The colour scale of a heat map: logarithmic for losses (a diverged cell at 4e4 then does not flatten the
    cells that matter), linear otherwise; over the finite values shown."""
    from matplotlib.colors import LogNorm, Normalize

    positive = values[values > 0] if values.size else values
    if log_scale(metric) and positive.size:
        return LogNorm(vmin=float(positive.min()), vmax=float(max(positive.max(), positive.min() * 1.01)))
    return Normalize(*((float(values.min()), float(values.max())) if values.size else (0.0, 1.0)))


def text_colour(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance, ITU-R BT.709), so every label reads."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def plot_pareto(tuning: dict, selection: dict, metric: str, path: Path) -> Optional[Path]:
    """Final ``reg/sparsity`` against final ``metric`` of every tuning run, per arm (light dots), the per-point
    medians over seeds (dots) and each arm's Pareto front of those medians (the best ``metric`` at sparsity ≥ s,
    a step line); vertical lines at the sparsities the claims read."""
    levels = pareto_levels(selection)
    if not levels:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = palette(plt, len(tuning))
    better = higher_is_better(metric)
    for k, (arm, runs) in enumerate(tuning.items()):
        color, style = colours[k]
        cells: dict = {}
        for run in runs:
            sp, value = run.summary.get(SPARSITY), run.summary.get(metric)
            point = point_of(run.summary, selection["arms"].get(arm, {}).get("grid", {}))
            if run.summary.get("status") == "completed" and is_number(sp) and is_number(value) and point is not None:
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
                    values = [v for v in values if is_finite_number(v)]
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
    plt = pyplot()
    cols = min(len(panels), PANELS_PER_ROW)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.6 * rows + 0.5), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    series = list(dict.fromkeys(name for _, name, _, _ in curves))
    colours = palette(plt, len(series))
    for ax, (key, shown) in zip(flat, panels):
        xs_all = []
        for key2, name, shown2, points in curves:
            if (key2, shown2) != (key, shown):
                continue
            color, style = colours[series.index(name)]
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
        ax.set_ylabel(metric_label(shown) if shown != metric else f"final {metric_label(metric)}", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("sensitivity (confirmation runs; line = median over seeds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path
