"""The report of a tuned experiment (``hydra/sweeper=tuned``): selection, confirmation, verdicts.

Reads ``selection.json`` (written by the sweeper) and the runs' files in the sweep dir; writes

* ``comparison.md`` — per arm the chosen hyperparameters (⚠ at the edge of the grid), the
  confirmation results (mean ± std, steps and seconds to target, κ where measured) and one
  verdict line per claim;
* ``verdicts.json`` — ``[{"claim", "verdict", "rule", "evidence"}]``;
* ``lr_sensitivity.png`` — final target metric vs lr per arm (every tuning seed, mean line; an arm
  searched over a second key along lr at its chosen value of that key);
* ``confirmation.png`` — the target metric of the confirmation runs (median over seeds, band = min–max),
  vs step and vs training seconds, or one panel per batch size where arms come in batch families;
* where the experiment has them, the views of :mod:`precond.sweep.grid_report` (heat maps of two-key
  grids, Pareto fronts, sensitivity curves with one sentence each).

Claims with ``stage: tuning`` are judged on each arm's grid values per tuning seed
(:mod:`precond.sweep.grid_metrics`), in the same Holm family as the confirmation claims.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Optional

from precond.metrics import TIME_TO_TARGET_RULE, target_text
from precond.run.files import write_text_atomically
from precond.settings import is_finite_number, is_int, is_number
from precond.sweep.evidence import EVIDENCE, collect_sweep, read_evidence, runs_of, write_evidence
from precond.sweep.grid_metrics import grid_values, pareto_level, point_of
from precond.sweep.grid_report import (
    HEATMAP,
    PANELS_PER_ROW,
    PARETO_PLOT,
    SENSITIVITY_PLOT,
    heatmap_arms,
    pareto_levels,
    plot_grid_heatmaps,
    plot_pareto,
    plot_sensitivity,
    sensitivity_text,
)
from precond.sweep.labels import log_scale, metric_label
from precond.sweep.runs import ReportError, RunRecord, palette, pyplot, save_figure
from precond.sweep.tuning import format_value
from precond.sweep.verdicts import (
    FINAL,
    RULE,
    Claim,
    Verdict,
    count_states,
    estimate_text,
    families_text,
    invalid_arms,
    judge_staged,
)

SELECTION = "selection.json"
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


def confirmation_by_key(confirmation: dict, selection: dict) -> dict:
    """The confirmation runs per run key: ``arm`` at its chosen point, ``arm@final`` at its final-value choice
    (claims with ``selection: final``); a run belongs to a point when its overrides hold every value of it."""
    out = {}
    for arm, runs in confirmation.items():
        entry = selection["arms"].get(arm, {})
        for key, point in ((arm, entry.get("chosen")), (arm + FINAL, entry.get("chosen_final"))):
            if point is not None and (key == arm or "chosen_final" in entry):
                out[key] = [r for r in runs if _at_point(r, point)]
    return out


def _at_point(run: RunRecord, point: dict) -> bool:
    overrides = set(run.summary.get("overrides", []))
    return all(f"{k}={'null' if v is None else format_value(v)}" in overrides for k, v in point.items())


def judge_claims(selection: dict, confirmation: dict, tuning: Optional[dict] = None) -> list[Verdict]:
    """Every claim of ``selection`` judged on exactly the confirmation seeds it declares (runs of other
    seeds in the dir are not looked at), Holm-adjusted over the experiment's empirical claims. Claims with
    ``stage: tuning`` are judged on each arm's grid values per declared tuning seed (``tuning``: its runs).
    ``confirmation``: run key (:func:`confirmation_by_key`) → runs."""
    seeds = list(selection.get("confirmation_seeds", []))
    by_seed = {key: {r.summary.get("seed"): r.summary for r in runs if r.summary.get("seed") in seeds}
               for key, runs in confirmation.items()}
    invalid = invalid_arms(selection)
    tuning_seeds = list(selection.get("tuning_seeds", []))
    claims = [Claim(**c) for c in selection.get("claims", [])]
    levels = tuple(sorted({pareto_level(side.metric) for c in claims for side in c.sides
                           if not isinstance(side, float) and pareto_level(side.metric) is not None}))
    grids = {arm: grid_values([r.summary for r in runs if r.summary.get("seed") in tuning_seeds],
                              selection["arms"][arm]["grid"], runs[0].summary.get("target_metric", "val/loss"), levels)
             for arm, runs in (tuning or {}).items() if arm in selection["arms"] and runs}
    return judge_staged(claims, by_seed, seeds, selection.get("stages"), invalid, tuning=(grids, tuning_seeds))


def _verdict_table(verdicts: list[Verdict]) -> str:
    lines = ["| claim | role | verdict | effect (estimate, 95 % interval) | for / against / tied | p (Holm) |",
             "|---|---|---|---|---|---|"]
    for v in verdicts:
        effect = v.effect
        if effect:
            shown = effect_text(effect)
        else:
            shown = "—"
        p = "—" if v.p_value is None else f"{v.p_value:.3g} ({v.p_adjusted:.3g})"
        role = (effect or {}).get("role", "identity" if v.verdict == "identity" else "—")
        lines.append(f"| {v.claim} | {role} | **{v.verdict}** | {shown} | {v.wins} / {v.losses} / {v.ties} of {v.n} "
                     f"| {p} |")
    return "\n".join(lines)


def effect_text(effect: dict) -> str:
    """An effect as people read it: ×ratio (than/better) or ±difference — a bound (``≥ ×6``) where pairs were
    censored — with its interval, the margin and the paired estimator."""
    def one(x):
        if x in ("inf", "-inf"):
            return ("∞" if x == "inf" else ("0" if effect["scale"] == "ratio" else "−∞"))
        return f"×{math.exp(x):.3g}" if effect["scale"] == "ratio" else f"{x + 0.0:+.3g}"  # + 0.0: no "-0"

    low, high = effect["ci"]
    kind = ", non-inferiority" if effect.get("kind") == "noninferiority" else ""
    return (f"{estimate_text(effect['scale'], effect['estimate'])} [{one(low)}, {one(high)}] "
            f"({effect.get('estimator', 'median')}; margin {effect['margin']:g}{kind})")


def headline(verdicts: list) -> str:
    """``3 holds, 1 fails, 0 equivalent, 2 inconclusive, 1 invalid; 2 identities (not counted as support)``."""
    c = count_states(verdicts)
    return (f"{c['holds']} holds, {c['noninferior']} noninferior, {c['fails']} fails, {c['equivalent']} equivalent, "
            f"{c['inconclusive']} "
            f"inconclusive, {c['invalid']} invalid; {c['identity']} identities (not counted as support)")


def too_easy(confirmation: dict) -> Optional[str]:
    """A warning when the fastest arm needs fewer than :data:`MIN_INTERVALS` evaluation intervals:
    steps to target are then resolved too coarsely to separate methods."""
    fastest = None
    for arm, runs in confirmation.items():
        steps = [r.summary.get("steps_to_target") for r in runs if r.summary.get("status") == "completed"]
        if steps and all(is_number(x) for x in steps):
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
        if "chosen_final" in entry:  # the point the claims on final values read (selection: final)
            final = (f"**invalid**: {entry.get('invalid_final')}" if entry["chosen_final"] is None else
                     ", ".join(f"{k}={v}" + (" ⚠ edge of grid" if k in entry.get("at_edge_final", []) else "")
                               for k, v in entry["chosen_final"].items()) + " (best median final value)")
            lines.append(f"| {arm}{FINAL} | {final} | (the same) | {entry['tuning_seeds'] or '—'} |")
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
    """Collect the tuned experiment's evidence into ``sweep_dir/evidence.json.gz``, then judge its claims and write
    its report there; return the verdicts."""
    sweep_dir = Path(sweep_dir)
    selection = _read_selection(sweep_dir)
    evidence = collect_sweep(sweep_dir)
    write_evidence(sweep_dir / EVIDENCE, evidence)
    return render_tuned_report(sweep_dir, selection, runs_of(evidence, sweep_dir), evidence["problems"], quiet)


def rejudge_tuned_report(report_dir: str | Path, claims: Optional[list] = None, quiet: bool = True,
                         rules_at: Optional[str] = None) -> list[Verdict]:
    """Judge and render a tuned experiment again from the evidence and selection stored in ``report_dir`` (no run
    is read or trained), with ``claims`` (dicts, e.g. today's config) in place of those stored in the selection.
    ``rules_at``: a page whose headings state the selection and verdict rules (``#the-selection-rule``,
    ``#the-verdict-rule``); the report links there instead of stating them (a set of pages states them once)."""
    report_dir = Path(report_dir)
    selection = _read_selection(report_dir)
    if claims is not None:
        selection["claims"] = [Claim(**c).as_dict() for c in claims]
        write_text_atomically(report_dir / SELECTION, json.dumps(selection, indent=2, default=str) + "\n")
    evidence = read_evidence(report_dir / EVIDENCE)
    return render_tuned_report(report_dir, selection, runs_of(evidence, report_dir), evidence["problems"], quiet,
                               rules_at)


def _families(selection: dict) -> str:
    claims = [Claim(**c) for c in selection.get("claims", [])]
    stages = selection.get("stages") or [len(selection.get("confirmation_seeds", []))]
    text = families_text(claims, stages[0], len(selection.get("tuning_seeds", [])), len(stages))
    return text + (f" (staged confirmation on {stages} seeds: each of the {len(stages)} looks spends α/{len(stages)})"
                   if len(stages) > 1 else "")


#: the shape of selection.json the report reads: key → (accepted types, what it is)
SELECTION_SHAPE = {"arms": (dict, "a mapping of arm → its selection"), "claims": (list, "a list of claims"),
                   "tuning_seeds": (list, "a list of seeds"), "confirmation_seeds": (list, "a list of seeds"),
                   "stages": ((list, type(None)), "a list of seed counts or null"),
                   "target": ((dict, type(None)), "a mapping or null")}


def _read_selection(directory: Path) -> dict:
    """``selection.json``, checked against the shape the report reads: a damaged file is one error that names
    the key, never a traceback from deep in the report."""
    path = directory / SELECTION
    try:
        selection = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"{path} is unreadable ({err})") from None
    fix = "the file is damaged: rerun the sweep's command (finished runs are kept) to write it again"
    if not isinstance(selection, dict):
        raise ReportError(f"{path}: expected a mapping, got {type(selection).__name__} — {fix}")
    for key, (types, what) in SELECTION_SHAPE.items():
        if key in selection and not isinstance(selection[key], types):
            raise ReportError(f"{path}: {key}: expected {what}, got {type(selection[key]).__name__} — {fix}")
    for arm, entry in selection.get("arms", {}).items():
        if not isinstance(entry, dict):
            raise ReportError(f"{path}: arms.{arm}: expected a mapping, got {type(entry).__name__} — {fix}")
    return selection


def render_tuned_report(sweep_dir: Path, selection: dict, runs: list[RunRecord], problems: list[str],
                        quiet: bool = False, rules_at: Optional[str] = None) -> list[Verdict]:
    """Judge the claims of ``selection`` on ``runs`` and write verdicts.json, comparison.md and the plots."""
    confirmation = _runs_by_stage(runs, "confirmation")
    tuning = _runs_by_stage(runs, "tuning")
    first = next((r.summary for r in runs if r.summary.get("target_metric")), {})
    metric = first.get("target_metric", "val/loss")
    target = target_text(metric, first.get('target_value'))
    seeds = list(selection.get("confirmation_seeds", []))
    confirmation = {key: [r for r in rs if r.summary.get("seed") in seeds]
                    for key, rs in confirmation_by_key(confirmation, selection).items()}
    verdicts = judge_claims(selection, confirmation, tuning)
    write_text_atomically(sweep_dir / VERDICTS, json.dumps([v.as_dict() for v in verdicts], indent=2) + "\n")
    warning = too_easy(confirmation)
    title = f"# {first.get('name') or sweep_dir.name}: a tuned comparison"
    text = (f"{title}\n\n{problem_text(runs, selection, target)}\n\n"
            f"## Selection\n\nRule: "
            + (f"[the selection rule]({rules_at}#the-selection-rule)" if rules_at else selection['rule'])
            + ". Tuning seeds "
            f"{selection['tuning_seeds']}, confirmation seeds {selection['confirmation_seeds']}. "
            + (f"Claims with selection: final read their arms at another point: {selection['final_rule']}. "
               if selection.get("final_rule") and not rules_at else "")
            + (f"Time to target: {TIME_TO_TARGET_RULE}.\n\n" if not rules_at else "\n\n")
            + f"{_selection_table(selection)}\n\n## Confirmation (chosen setting, fresh seeds)\n\n"
            f"{_confirmation_table(confirmation, metric, target)}\n\n"
            + (f"⚠ {warning}\n\n" if warning else "")
            + (f"## Sensitivity\n\n{sensitivity_text(confirmation, selection, metric)}\n\n"
               f"![sensitivity]({SENSITIVITY_PLOT})\n\n" if selection.get("sensitivity") else "")
            + f"## Verdicts\n\n{headline(verdicts)}. {_families(selection)}.\n\n"
            + (_verdict_table(verdicts) + "\n\n" if verdicts else "")
            + ("".join(f"- {v.line()}\n" for v in verdicts) or "- (no claims declared)\n")
            + (f"\nRule: [the verdict rule]({rules_at}#the-verdict-rule).\n" if rules_at else f"\nRule: {RULE}.\n")
            + "\n![lr sensitivity](lr_sensitivity.png)\n![confirmation](confirmation.png)\n"
            + (f"![grid heat map]({HEATMAP})\n" if heatmap_arms(selection) else "")
            + (f"![pareto]({PARETO_PLOT})\n" if pareto_levels(selection) else "")
            + ("\nNot in the tables:" + "".join(f"\n- {p}" for p in problems) + "\n" if problems else ""))
    write_text_atomically(sweep_dir / "comparison.md", text)
    (sweep_dir / "comparison.png").unlink(missing_ok=True)  # a plain report's plot from an interrupted stage
    plot_lr_sensitivity(tuning, selection, metric, sweep_dir / "lr_sensitivity.png")
    plot_confirmation(confirmation, metric, sweep_dir / "confirmation.png", first.get("target_value"), selection)
    (sweep_dir / HEATMAP).unlink(missing_ok=True)
    plot_grid_heatmaps(tuning, selection, metric, sweep_dir / HEATMAP)
    (sweep_dir / PARETO_PLOT).unlink(missing_ok=True)
    plot_pareto(tuning, selection, metric, sweep_dir / PARETO_PLOT)
    (sweep_dir / SENSITIVITY_PLOT).unlink(missing_ok=True)
    plot_sensitivity(confirmation, selection, metric, sweep_dir / SENSITIVITY_PLOT)
    if not quiet:
        print(console_summary(title, problem_text(runs, selection, target), verdicts, sweep_dir))
    return verdicts


def console_summary(title: str, problem: str, verdicts: list[Verdict], sweep_dir: Path) -> str:
    """What a tuned sweep prints at its end (the whole report is in comparison.md): what was compared, one line
    per verdict with its effect, and where the report is."""
    lines = ["", title.lstrip("# "), problem.replace("**", ""), "", headline(verdicts) + ":"] if verdicts else \
        ["", title.lstrip("# "), problem.replace("**", "")]
    for v in verdicts:
        effect = f" {effect_text(v.effect)}" if v.effect else ""
        lines.append(f"  {v.verdict:<12} {v.claim}{effect}")
    lines += ["", f"report: {sweep_dir / 'comparison.md'} (selection, confirmation, every verdict's reason, figures)"]
    return "\n".join(lines)


def problem_text(runs: list[RunRecord], selection: dict, target: str) -> str:
    """One paragraph that says what was compared: the arms, model, data, budget and target (from the runs)."""
    summaries = [r.summary for r in runs]
    choices = next((s.get("choices") for s in summaries if s.get("choices")), {}) or {}
    models = sorted({str(s.get("choices", {}).get("model")) for s in summaries if s.get("choices")}) or ["?"]
    data = sorted({str(s.get("choices", {}).get("dataset")) for s in summaries if s.get("choices")}) or ["?"]
    sizes = sorted({s["parameters"] for s in summaries if is_int(s.get("parameters"))})
    # the budget: the steps of the runs that completed (a diverged run stops where it diverged)
    steps = sorted({s["steps"] for s in summaries
                    if is_int(s.get("steps")) and s.get("status") == "completed"})
    arms = list(selection.get("arms", {}))
    size_text = f" ({', '.join(f'{n:,}' for n in sizes)} parameters)" if sizes else ""
    steps_text = ", ".join(str(n) for n in steps) if steps else "?"
    return (f"**What was compared.** {len(arms)} arms ({', '.join(arms)}), each tuned in its own grid, on model "
            f"`{'`, `'.join(models)}`{size_text} and dataset `{'`, `'.join(data)}`"
            + (f" (default normalization `{choices.get('normalization')}`)" if choices.get("normalization") else "")
            + f"; {steps_text} steps per run; target: {target}. Claims and their verdicts are at the end.")


def sensitivity_slice(runs: list[RunRecord], entry: dict, metric: str) -> tuple[dict, dict]:
    """``({lr: [final metric or None per tuning run]}, fixed)``: an arm's tuning runs along lr through its chosen
    point. For an arm searched over more keys than lr, ``fixed`` holds the chosen values of the others and only
    runs at those values count, so a line never averages over a second key (its whole grid is a heat map)."""
    grid = entry.get("grid") or {}
    chosen = entry.get("chosen") or {}
    others = {key: chosen[key] for key in grid if key != "lr" and key in chosen}
    points: dict = {}
    for run in runs:
        point = point_of(run.summary, grid) if grid else None
        at = dict(zip(grid, point)) if point is not None else {}
        if any(at.get(key) != value for key, value in others.items()):
            continue
        lr = at.get("lr", _lr_of(run))
        if lr is not None:
            value = run.summary.get(metric) if run.summary.get("status") == "completed" else None
            points.setdefault(lr, []).append(value if is_finite_number(value)
                                             else None)
    return points, others


def plot_lr_sensitivity(tuning: dict, selection: dict, metric: str, path: Path) -> Optional[Path]:
    """Final ``metric`` vs lr per arm: a dot per tuning run, the mean over tuning seeds as a line (only where no
    seed diverged or failed), the chosen lr circled on that line. An arm searched over a second key is drawn
    along lr at its chosen value of that key (named in the legend; its whole grid is in the heat map)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9 if len(tuning) > 6 else 7.5, 4.5))
    colours = palette(plt, len(tuning))
    for k, (arm, runs) in enumerate(tuning.items()):
        color, style = colours[k]
        entry = selection["arms"].get(arm, {})
        points, fixed = sensitivity_slice(runs, entry, metric)
        if not points:
            continue
        lrs = sorted(points)
        for lr in lrs:
            ok = [v for v in points[lr] if v is not None]
            ax.scatter([lr] * len(ok), ok, color=color, s=12, alpha=0.6)
        means = {lr: statistics.fmean(points[lr]) for lr in lrs if None not in points[lr]}
        label = arm + (" (" + ", ".join(f"{key.split('.')[-1]}={value:g}" if isinstance(value, float)
                                        else f"{key.split('.')[-1]}={value}" for key, value in fixed.items()) + ")"
                       if fixed else "")
        if means:
            ax.plot(list(means), list(means.values()), color=color, linestyle=style, label=label)
        ineligible = {p["point"].get("lr") for p in entry.get("points", []) if not p.get("eligible", True)
                      and all(p["point"].get(key) == value for key, value in fixed.items())}
        crossed = [(lr, statistics.fmean(ok)) for lr in lrs if lr in ineligible
                   and (ok := [v for v in points[lr] if v is not None])]
        if crossed:
            ax.scatter(*zip(*crossed), marker="x", s=50, color=color, linewidths=1.5)
        chosen = (entry.get("chosen") or {}).get("lr")
        if chosen in means:
            ax.scatter([chosen], [means[chosen]], s=120, facecolors="none", edgecolors=color, linewidths=2)
    ax.set_xscale("log")
    if log_scale(metric):
        ax.set_yscale("log")
    ax.set_xlabel("learning rate (lr)")
    ax.set_ylabel(f"final {metric_label(metric)} (tuning runs)")
    ax.set_title("lr sensitivity: dots = tuning runs, line = mean over tuning seeds,\n"
                 "circle = chosen, × = ineligible; a missing point diverged or failed", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _lr_of(run: RunRecord) -> Optional[float]:
    for override in run.summary.get("overrides", []):
        if override.startswith("lr="):
            try:
                return float(override[3:])
            except ValueError:
                return None
    return None


def confirmation_panels(arms: list[str], selection: dict) -> dict[str, list[str]]:
    """Arms grouped into panels: one panel per batch size where the arms differ in it (a batch family reads
    side by side), else one panel. Panels are ordered by batch size, arms keep their order."""
    sizes = {arm: (selection["arms"].get(arm, {}).get("overrides") or {}).get("batch_size") for arm in arms}
    if len(set(sizes.values())) <= 1 or None in sizes.values():
        return {"": list(arms)}
    panels: dict[str, list[str]] = {}
    for arm in sorted(arms, key=lambda a: float(sizes[a])):
        panels.setdefault(f"batch {sizes[arm]}", []).append(arm)
    return panels


def arm_family(arm: str, selection: dict) -> str:
    """What an arm is apart from its batch size: arms of one family share a colour. An arm named for its batch
    size (``bnp_b8`` with ``batch_size: 8``) belongs to the family of its name's stem (its other overrides, such
    as a warm-up scaled with the batch, may differ); any other arm is a family of its own."""
    size = (selection["arms"].get(arm, {}).get("overrides") or {}).get("batch_size")
    suffix = f"_b{size}"
    return arm[:-len(suffix)] if size is not None and arm.endswith(suffix) else arm


def median_curve(runs: list[RunRecord], x_key: str, metric: str) -> Optional[tuple[list, list, list, list]]:
    """``(x, median, low, high)`` of ``metric`` over the runs at each ``x`` that at least half of them logged
    (low/high: min and max over those runs); None when no run logged it."""
    by_x: dict = {}
    for run in runs:
        for row in run.metrics:
            value = row.get(metric)
            if x_key in row and is_finite_number(value):
                by_x.setdefault(row[x_key] if x_key == "step" else round(row[x_key], 3), []).append(value)
    xs = [x for x in sorted(by_x) if 2 * len(by_x[x]) >= len(runs)]
    if not xs:
        return None
    return (xs, [statistics.median(by_x[x]) for x in xs], [min(by_x[x]) for x in xs], [max(by_x[x]) for x in xs])


def plot_confirmation(confirmation: dict, metric: str, path: Path, target: Optional[float] = None,
                      selection: Optional[dict] = None) -> Path:
    """``metric`` of the confirmation runs per arm: the median over seeds as a line, the min–max band around it.
    Arms in batch families get a panel per batch size (at most :data:`PANELS_PER_ROW` per row, vs step), one
    colour per family; otherwise one panel vs step and one vs training seconds."""
    plt = pyplot()
    panels = confirmation_panels(list(confirmation), selection or {"arms": {}})
    faceted = len(panels) > 1
    families = list(dict.fromkeys(arm_family(arm, selection or {"arms": {}}) for arm in confirmation))
    colours = dict(zip(families, palette(plt, len(families))))
    views = [(title, arms, "step") for title, arms in panels.items()] if faceted else [
        ("vs step", list(confirmation), "step"), ("vs training seconds", list(confirmation), "time/train_s")]
    cols = min(len(views), PANELS_PER_ROW if faceted else 2)
    rows = math.ceil(len(views) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 2.2, 3.6 * rows + 0.6), sharey=True,
                             squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(views):]:
        ax.set_visible(False)
    for ax, (title, arms, x_key) in zip(flat, views):
        for arm in arms:
            curve = median_curve(confirmation[arm], x_key, metric)
            if curve is None:
                continue
            color, style = colours[arm_family(arm, selection or {"arms": {}})]
            xs, median, low, high = curve
            ax.plot(xs, median, color=color, linestyle=style, lw=1.5, label=f"{arm} (n={len(confirmation[arm])})")
            ax.fill_between(xs, low, high, color=color, alpha=0.15)
        if target is not None:
            ax.axhline(target, color="black", linestyle=":", lw=1, label="target")
        if log_scale(metric):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training seconds" if x_key == "time/train_s" else "step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for row in axes:
        row[0].set_ylabel(metric_label(metric))
    fig.suptitle(f"confirmation runs: {metric_label(metric)} (line = median over seeds, band = min–max)",
                 fontsize=10)
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
