"""Compare the runs of a sweep: a table (mean ± std over seeds) and a loss-vs-step plot.

Runs are grouped by their overrides with ``seed`` removed, so ``-m
preconditioner=sgd,adam seed=0,1,2`` gives two groups of three runs.
``precond-report SWEEP_DIR`` (or the automatic report at the end of a
multirun) writes ``comparison.md`` and ``comparison.png`` into the sweep dir.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from precond.metrics import target_text
from precond.run.files import write_text_atomically
from precond.sweep.runs import ReportError, RunRecord, load_runs, save_figure
from precond.sweep.tuned_report import tuned_report

#: summary keys shown as extra columns (mean ± std) when any run has them
EXTRA_COLUMNS = ("val/acc", "test/acc", "reg/sparsity", "curvature/p/kappa", "curvature/z/kappa",
                 "curvature/p/lam_max", "curvature/z/lam_max")


@dataclass
class Row:
    label: str
    runs: int
    completed: int
    final_mean: Optional[float]
    final_std: Optional[float]
    reached: int
    steps_to_target: Optional[float]
    seconds_to_target: Optional[float]
    extras: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)


def _mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[RunRecord], metric: str, extra_columns: tuple[str, ...] = ()) -> list[Row]:
    """One row per group: final ``metric`` mean ± std over completed runs, steps/seconds-to-target."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    rows = []
    for label, members in groups.items():
        done = [r for r in members if r.summary.get("status") == "completed"]
        mean, std = _mean_std([r.summary.get(metric) for r in done])
        hit = [r for r in done if r.summary.get("steps_to_target") is not None]
        rows.append(Row(
            label=label, runs=len(members), completed=len(done), final_mean=mean, final_std=std,
            reached=len(hit),
            steps_to_target=statistics.fmean(r.summary["steps_to_target"] for r in hit) if hit else None,
            seconds_to_target=statistics.fmean(r.summary["seconds_to_target"] for r in hit) if hit else None,
            extras={key: _mean_std([r.summary.get(key) for r in done]) for key in extra_columns},
            statuses=dict(Counter(r.summary.get("status", "?") for r in members if r not in done)),
        ))
    return rows


def _fmt(value: Optional[float], spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _pm(mean_std: tuple[Optional[float], Optional[float]]) -> str:
    mean, std = mean_std
    return "—" if mean is None else f"{mean:.4g} ± {std:.2g}"


def format_table(rows: list[Row], metric: str, target: str) -> str:
    """A Markdown table; steps/seconds-to-target average the runs that reached the target."""
    extras = list(rows[0].extras) if rows else []
    lines = [
        f"| run | completed | final {metric} (mean ± std) | reached {target} | steps to target | "
        f"seconds to target |" + "".join(f" {k} |" for k in extras),
        "|---|---|---|---|---|---|" + "---|" * len(extras),
    ]
    for r in rows:
        others = "".join(f" ({n} {status})" for status, n in r.statuses.items())
        lines.append(f"| {r.label} | {r.completed}/{r.runs}{others} | {_pm((r.final_mean, r.final_std))} | "
                     f"{r.reached}/{r.completed} | {_fmt(r.steps_to_target, '.0f')} | "
                     f"{_fmt(r.seconds_to_target, '.3f')} |" + "".join(f" {_pm(r.extras[k])} |" for k in extras))
    return "\n".join(lines)


def _facet(label: str) -> tuple[str, str]:
    """Split ``k1=v1,k2=v2,...`` into the panel (``k1=v1``) and the line label (the rest)."""
    head, _, rest = label.partition(",")
    return (head, rest) if rest else ("", label)


def _mean_curve(members: list[RunRecord], metric: str):
    """Steps common to all seeds, and the mean, min and max over seeds at those steps."""
    curves = [run.series(metric) for run in members if run.series(metric)[0]]
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(s) for s, _ in curves)))
    if not steps:
        return None
    values = [[dict(zip(s, v))[t] for t in steps] for s, v in curves]
    cols = list(zip(*values))
    return steps, [statistics.fmean(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols], len(curves)


def plot(runs: list[RunRecord], metric: str, path: str | Path, title: str = "") -> Path:
    """``metric`` vs step per group: mean line and min–max band over seeds, log y for losses.

    With two or more varying overrides and at most 6 values of the first one, one panel per
    value of the first override (shared axes), one line per value of the others.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    panels: dict[str, list[str]] = {}
    for label in groups:
        panels.setdefault(_facet(label)[0], []).append(label)
    if len(panels) > 6:
        panels = {"": list(groups)}
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 1.5 if n > 1 else 7, 4.5), sharey=True, squeeze=False)
    line_names = list(dict.fromkeys(_facet(label)[1] if panel else label
                                    for panel, labels in panels.items() for label in labels))
    palette = plt.get_cmap("tab10" if len(line_names) <= 10 else "tab20").colors
    color = {name: palette[k % len(palette)] for k, name in enumerate(line_names)}  # same line, same color
    for ax, (panel, labels) in zip(axes[0], panels.items()):
        for label in labels:
            curve = _mean_curve(groups[label], metric)
            if curve is None:
                continue
            steps, mean, low, high, count = curve
            name = _facet(label)[1] if panel else label
            ax.plot(steps, mean, color=color[name], label=f"{name} (n={count})")
            if count > 1:
                ax.fill_between(steps, low, high, color=color[name], alpha=0.2)
        if "loss" in metric:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(panel, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(metric)
    fig.suptitle(title or f"{metric} vs step (mean, band = min–max over seeds)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def compare(sweep_dir: str | Path, metric: Optional[str] = None, quiet: bool = False) -> str:
    """Write ``comparison.md`` and ``comparison.png`` in ``sweep_dir``; print and return the table."""
    sweep_dir = Path(sweep_dir)
    problems: list[str] = []
    runs = load_runs(sweep_dir, problems)
    if not runs:
        raise ReportError(f"no readable run directories (with summary.json) under {sweep_dir}")
    first = runs[0].summary
    metric = metric or ("val/loss" if any("val/loss" in r.summary for r in runs) else "train/loss")
    known = sorted({k for r in runs for k, v in r.summary.items() if "/" in k and isinstance(v, (int, float))})
    if metric not in known:
        raise ReportError(f"--metric {metric!r} is not in these runs' summaries; expected one of {known}")
    target_metric = first.get("target_metric", "?")
    target = target_text(target_metric, first.get('target_value'))
    extra = tuple(k for k in EXTRA_COLUMNS if k != metric and any(r.summary.get(k) is not None for r in runs))
    table = format_table(summarize(runs, metric, extra), metric, target)
    notes = "".join(f"\n- {p}" for p in problems)
    text = f"# {sweep_dir.name}\n\n{table}\n" + (f"\nNot in the table:{notes}\n" if problems else "")
    write_text_atomically(sweep_dir / "comparison.md", text)
    plot(runs, metric, sweep_dir / "comparison.png", title=f"{sweep_dir.name}: {metric}")
    if not quiet:
        print(table)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        print(f"\nwrote {sweep_dir / 'comparison.md'} and {sweep_dir / 'comparison.png'}")
    return table


def write_report(sweep_dir: str | Path, quiet: bool = False, metric: Optional[str] = None) -> None:
    """The report a sweep dir calls for: the tuned report when the tuning sweeper left a
    ``selection.json``, else the comparison table and plot."""
    if (Path(sweep_dir) / "selection.json").exists():
        tuned_report(sweep_dir, quiet=quiet)
    else:
        compare(sweep_dir, metric, quiet=quiet)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="precond-report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a Hydra sweep directory (outputs/sweeps/...)")
    parser.add_argument("--metric", default=None, help="metric to compare (default val/loss)")
    args = parser.parse_args(argv)
    try:
        write_report(args.sweep_dir, metric=args.metric)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged selection.json, an unwritable dir
        print(f"error: {args.sweep_dir}: could not write the report: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
