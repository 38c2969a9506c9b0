"""Compare the runs of a sweep: a table (mean ± std over seeds) and a loss-vs-step plot.

Runs are grouped by their overrides with ``seed`` removed, so ``-m
preconditioner=sgd,adam seed=0,1,2`` gives two groups of three runs.
``precond-report SWEEP_DIR`` (or the automatic report at the end of a
multirun) writes ``comparison.md`` and ``comparison.png`` into the sweep dir for the runs'
target metric; ``--metric M`` writes ``comparison_<M>.md``/``.png`` beside them. The table
shows each group's varying hyperparameters (always its learning rate, read from each run's
``config.yaml``); the plot marks the target and lists the runs it cannot show.
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
from precond.settings import is_int, is_number
from precond.sweep.labels import log_scale, metric_label
from precond.sweep.runs import ReportError, RunRecord, load_runs, save_figure
from precond.sweep.tuned_report import tuned_report

#: summary keys shown as extra columns (mean ± std) when any run has them
EXTRA_COLUMNS = ("val/acc", "test/acc", "reg/sparsity", "curvature/p/kappa", "curvature/z/kappa",
                 "curvature/p/lam_max", "curvature/z/lam_max")


#: resolved config keys that count as hyperparameters of an arm (leaves below these roots)
HYPER_ROOTS = ("lr", "batch_size", "steps", "preconditioner", "regularization", "normalization", "schedule")
#: leaves that are names or duplicates, never shown as hyperparameter columns
NOT_HYPER = ("preconditioner.lr", "preconditioner.name", "regularization.name", "normalization.name",
             "schedule.name")


def _leaves(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key != "_target_":
                out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def hyperparameters(run: RunRecord) -> dict:
    """The run's resolved hyperparameters (flattened: ``preconditioner.momentum``), from config.yaml."""
    config = run.config
    leaves = _leaves({k: config[k] for k in HYPER_ROOTS if k in config})
    return {k: v for k, v in leaves.items() if k not in NOT_HYPER}


def varying_hyperparameters(runs: list[RunRecord]) -> list[str]:
    """``lr`` and every hyperparameter whose value differs between the sweep's runs (seeds aside)."""
    values: dict[str, set] = {}
    for run in runs:
        for key, value in hyperparameters(run).items():
            values.setdefault(key, set()).add(repr(value))
    return ["lr"] + [k for k, v in values.items() if len(v) > 1 and k != "lr"]


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
    hyper: dict = field(default_factory=dict)
    target: str = ""


def _mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _one_value(values: list) -> str:
    shown = list(dict.fromkeys("—" if v is None else format(v, ".4g") if isinstance(v, float) else str(v)
                               for v in values))
    return shown[0] if len(shown) == 1 else " / ".join(shown)


def summarize(runs: list[RunRecord], metric: str, extra_columns: tuple[str, ...] = (),
              hyper_columns: tuple[str, ...] = ()) -> list[Row]:
    """One row per group: final ``metric`` mean ± std over completed runs, steps/seconds-to-target,
    the group's ``hyper_columns`` values and its target."""
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
            hyper={key: _one_value([hyperparameters(r).get(key) for r in members]) for key in hyper_columns},
            target=_one_value([_target_of(r) for r in members]),
        ))
    return rows


def _target_of(run: RunRecord) -> Optional[str]:
    metric = run.summary.get("target_metric")
    return None if metric is None else target_text(metric, run.summary.get("target_value"))


def _fmt(value: Optional[float], spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _pm(mean_std: tuple[Optional[float], Optional[float]]) -> str:
    mean, std = mean_std
    return "—" if mean is None else f"{mean:.4g} ± {std:.2g}"


def format_table(rows: list[Row], metric: str) -> str:
    """A Markdown table; steps/seconds-to-target average the runs that reached the target. The
    target is in the header when every group shares it, else a column of its own."""
    extras = list(rows[0].extras) if rows else []
    hyper = list(rows[0].hyper) if rows else []
    targets = {r.target for r in rows}
    shared = len(targets) == 1
    reached = f"reached {next(iter(targets))}" if shared else "reached target"
    lines = [
        "| run |" + "".join(f" {k} |" for k in hyper) + ("" if shared else " target |")
        + f" completed | final {metric} (mean ± std) | {reached} | steps to target | seconds to target |"
        + "".join(f" {k} |" for k in extras),
        "|---|" + "---|" * (len(hyper) + (0 if shared else 1)) + "---|---|---|---|---|" + "---|" * len(extras),
    ]
    for r in rows:
        others = "".join(f" ({n} {status})" for status, n in r.statuses.items())
        lines.append(f"| {r.label} |" + "".join(f" {r.hyper[k]} |" for k in hyper)
                     + ("" if shared else f" {r.target} |")
                     + f" {r.completed}/{r.runs}{others} | {_pm((r.final_mean, r.final_std))} | "
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


#: panels per row of the comparison plot (a grid that fits a page)
PANEL_COLUMNS = 3


def not_plotted(runs: list[RunRecord], metric: str) -> list[str]:
    """One line per run the plot cannot show as a finished curve: failed, diverged, interrupted
    (with the reason when its summary gives one), or with no ``metric`` records."""
    lines = []
    for run in runs:
        status = run.summary.get("status", "?")
        seed = run.summary.get("seed")
        who = f"{run.label} (seed {seed})" if seed is not None else run.label
        if status != "completed":
            why = run.summary.get("error") or (f"at step {run.summary['steps']}" if run.summary.get("steps") else "")
            lines.append(f"{who}: {status}" + (f" — {str(why)[:90]}" if why else ""))
        elif not run.series(metric)[0]:
            lines.append(f"{who}: no {metric} records")
    return lines


def plot(runs: list[RunRecord], metric: str, path: str | Path, title: str = "",
         target: Optional[float] = None) -> Path:
    """``metric`` vs step per group: mean line and min–max band over seeds, log y for losses and κ,
    the target as a dashed line, and the runs that are not (or not fully) shown listed below.

    With two or more varying overrides and at most 9 values of the first one, one panel per
    value of the first override (shared axes, up to 3 per row), one line per value of the others.
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
    if len(panels) > 3 * PANEL_COLUMNS:
        panels = {"": list(groups)}
    n = len(panels)
    cols = min(n, PANEL_COLUMNS)
    rows = math.ceil(n / cols)
    missing = not_plotted(runs, metric)
    note_height = 0.16 * min(len(missing), 12) + (0.3 if missing else 0)
    size = (4.6 * cols + (2.4 if cols == 1 else 0.8), 3.9 * rows + note_height)
    fig, axes = plt.subplots(rows, cols, figsize=size, sharey=True, sharex=True, squeeze=False)
    line_names = list(dict.fromkeys(_facet(label)[1] if panel else label
                                    for panel, labels in panels.items() for label in labels))
    palette = plt.get_cmap("tab10" if len(line_names) <= 10 else "tab20").colors
    color = {name: palette[k % len(palette)] for k, name in enumerate(line_names)}  # same line, same color
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax, (panel, labels) in zip(flat, panels.items()):
        for label in labels:
            curve = _mean_curve(groups[label], metric)
            if curve is None:
                continue
            steps, mean, low, high, count = curve
            name = _facet(label)[1] if panel else label
            ax.plot(steps, mean, color=color[name], label=f"{name} (n={count})")
            if count > 1:
                ax.fill_between(steps, low, high, color=color[name], alpha=0.2)
        if target is not None:
            ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
        if log_scale(metric):
            ax.set_yscale("log")
        ax.set_title(panel, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel(metric_label(metric))
    fig.suptitle(title or f"{metric_label(metric)} vs step (mean, band = min–max over seeds)", fontsize=11)
    if missing:
        more = [f"... and {len(missing) - 12} more (see the comparison table)"] if len(missing) > 12 else []
        fig.text(0.01, 0.01, "not shown or cut short:\n" + "\n".join(missing[:12] + more), fontsize=7,
                 va="bottom", family="monospace")
    _fixed_margins(fig, bottom=0.55 + note_height)
    return save_figure(fig, path)


def _fixed_margins(fig, bottom: float) -> None:
    """Margins in inches that fit this figure's texts: tick labels and the y label at the left
    (only the first column has them: shared y), the step axis below (only the last row: shared x),
    panel titles and the suptitle above. ``tight_layout`` measured every text for the same result
    at ~0.3 s a figure, as long as the training of a small sweep."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=1.0 / width, right=1 - 0.15 / width, bottom=bottom / height, top=1 - 0.75 / height,
                        wspace=0.12, hspace=0.45 / 3.5)


def report_paths(sweep_dir: Path, metric: str, default: bool) -> tuple[Path, Path]:
    """``comparison.md``/``.png`` for the default metric, ``comparison_<metric>.md``/``.png`` for another."""
    stem = "comparison" if default else "comparison_" + "".join(c if c.isalnum() else "-" for c in metric)
    return sweep_dir / f"{stem}.md", sweep_dir / f"{stem}.png"


def default_metric(runs: list[RunRecord]) -> str:
    """The runs' target metric (val/acc on classification data), else val/loss, else train/loss."""
    targets = [r.summary.get("target_metric") for r in runs if r.summary.get("target_metric")]
    common = max(set(targets), key=targets.count) if targets else None
    for metric in (common, "val/loss", "train/loss"):
        if metric and any(metric in r.summary for r in runs):
            return metric
    return "train/loss"


def sweep_title(runs: list[RunRecord], sweep_dir: Path) -> str:
    """``Sweep <name>: <dir>``: the runs' experiment name (when they share one other than the default) and the dir."""
    names = {r.summary.get("name") for r in runs if isinstance(r.summary.get("name"), str)}
    name = next(iter(names)) if len(names) == 1 and names != {"default"} else None
    return f"Sweep {name} ({sweep_dir.name})" if name else f"Sweep {sweep_dir.name}"


def _values(runs: list[RunRecord], key: str) -> list[str]:
    return sorted({str(r.summary.get("choices", {}).get(key)) for r in runs if isinstance(r.summary.get("choices"),
                                                                                        dict)} - {"None"})


def sweep_text(runs: list[RunRecord], metric: str) -> str:
    """One paragraph that says what was swept and on what: the values that differ between runs, the model, data,
    parameter count and steps, and what the table compares."""
    swept: dict[str, set] = {}
    for run in runs:
        for override in run.summary.get("overrides") or []:
            if isinstance(override, str) and "=" in override:
                key, _, value = override.lstrip("+~").partition("=")
                swept.setdefault(key, set()).add(value)
    varying = {k: sorted(v) for k, v in swept.items() if len(v) > 1}
    what = "; ".join(f"{k} ∈ {{{', '.join(v)}}}" for k, v in varying.items()) or "one setting"
    sizes = sorted({r.summary["parameters"] for r in runs if is_int(r.summary.get("parameters"))})
    steps = sorted({r.summary["steps"] for r in runs if is_int(r.summary.get("steps"))
                    and r.summary.get("status") == "completed"})
    model, data = _values(runs, "model") or ["?"], _values(runs, "dataset") or ["?"]
    size = f" ({', '.join(f'{n:,}' for n in sizes)} parameters)" if sizes else ""
    budget = f"; {', '.join(map(str, steps))} steps per completed run" if steps else ""
    return (f"**What was swept.** {len(runs)} runs over {what}, on model `{'`, `'.join(model)}`{size} and dataset "
            f"`{'`, `'.join(data)}`{budget}. The table groups them by setting and compares their final `{metric}`.")


def compare(sweep_dir: str | Path, metric: Optional[str] = None, quiet: bool = False, beside: bool = False) -> str:
    """Write ``comparison.md`` and ``comparison.png`` in ``sweep_dir`` (``comparison_<metric>.*`` for a
    metric other than the runs' target metric, or always with ``beside``); print and return the table."""
    sweep_dir = Path(sweep_dir)
    problems: list[str] = []
    runs = load_runs(sweep_dir, problems)
    if not runs:
        raise ReportError(f"no readable run directories (with summary.json) under {sweep_dir}")
    default = default_metric(runs)
    metric = metric or default
    known = sorted({k for r in runs for k, v in r.summary.items() if "/" in k and is_number(v)})
    if metric not in known:
        raise ReportError(f"--metric {metric!r} is not in these runs' summaries; expected one of {known}")
    extra = tuple(k for k in EXTRA_COLUMNS if k != metric and any(r.summary.get(k) is not None for r in runs))
    table = format_table(summarize(runs, metric, extra, tuple(varying_hyperparameters(runs))), metric)
    missing = not_plotted(runs, metric)
    notes = "".join(f"\n- {p}" for p in problems)
    text = (f"# {sweep_title(runs, sweep_dir)}\n\n{sweep_text(runs, metric)}\n\n{table}\n"
            + (f"\nNot in the table:{notes}\n" if problems else "")
            + ("\nNot shown (or cut short) in the plot:\n" + "".join(f"\n- {m}" for m in missing) + "\n"
               if missing else ""))
    md_path, png_path = report_paths(sweep_dir, metric, default=metric == default and not beside)
    write_text_atomically(md_path, text)
    targets = {(r.summary.get("target_metric"), r.summary.get("target_value")) for r in runs}
    line = next(iter(targets))[1] if len(targets) == 1 and next(iter(targets))[0] == metric else None
    plot(runs, metric, png_path, title=f"{sweep_dir.name}: {metric}", target=line)
    if not quiet:
        print(table)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        print(f"\nwrote {md_path} and {png_path}")
    return table


def write_report(sweep_dir: str | Path, quiet: bool = False, metric: Optional[str] = None) -> None:
    """The report a sweep dir calls for: the tuned report when the tuning sweeper left a
    ``selection.json``, else the comparison table and plot. ``metric`` on a tuned sweep adds the
    plain table and plot of every run for that metric as ``comparison_<metric>.md/.png``."""
    if (Path(sweep_dir) / "selection.json").exists():
        tuned_report(sweep_dir, quiet=quiet)
        if metric is not None:
            compare(sweep_dir, metric, quiet=quiet, beside=True)
    else:
        compare(sweep_dir, metric, quiet=quiet)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="precond-report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a Hydra sweep directory (outputs/sweeps/...)")
    parser.add_argument("--metric", default=None, help="metric to compare (default: the runs' target metric); "
                        "another metric than the default writes comparison_<metric>.md/.png beside the default report")
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
