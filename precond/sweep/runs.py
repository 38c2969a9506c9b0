"""The runs of a sweep dir as records: each run's summary and metrics, read defensively.

Both reports (:mod:`precond.sweep.report` for a plain sweep, :mod:`precond.sweep.tuned_report`
for a tuned one) read runs through :func:`load_runs`; a run that cannot be read is named in
``problems`` and left out, never fatal.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from precond.run.files import identifying_overrides
from precond.settings import is_int, is_number


class ReportError(ValueError):
    """Nothing to report (no readable runs) or a metric the runs do not have: one line for the user."""


def pyplot():
    """matplotlib's pyplot on the Agg backend, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def palette(plt, n: int) -> list[tuple]:
    """Distinct (color, linestyle) pairs: tab10 up to 10 arms, then tab10 again with dashes."""
    colors = plt.get_cmap("tab10").colors
    return [(colors[k % 10], "-" if k < 10 else "--") for k in range(n)]


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


@dataclass
class RunRecord:
    """One finished (or failed) run: its summary and its metric records."""

    path: Path
    summary: dict
    metrics: list[dict] = field(default_factory=list)

    label: str = ""
    _config: Optional[dict] = field(default=None, repr=False, compare=False)

    @property
    def overrides(self) -> dict[str, str]:
        pairs = (o.split("=", 1) for o in identifying_overrides(self.summary.get("overrides", [])) if "=" in o)
        return {k.lstrip("+~"): v for k, v in pairs}

    @property
    def config(self) -> dict:
        """The run's resolved config.yaml (empty when it is missing or unreadable); read once."""
        if self._config is None:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML has it: ~10× faster
            try:
                loaded = yaml.load((self.path / "config.yaml").read_text(encoding="utf-8"), Loader=loader)
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                loaded = None
            self._config = loaded if isinstance(loaded, dict) else {}
        return self._config

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[metric]) for r in self.metrics if r.get(metric) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]


def _label(runs: list[RunRecord]) -> None:
    """Label each run by the overrides that vary across the sweep (seeds excluded)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys]
    varying = [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]
    for run in runs:
        run.label = ",".join(f"{k}={run.overrides.get(k, '-')}" for k in varying) or "all runs"


def _is_number_or_none(value) -> bool:
    """A metric value as runs record it: a number, a flag (``curvature/p/converged``) or null."""
    return value is None or isinstance(value, bool) or is_number(value)


def summary_problem(summary: dict) -> Optional[str]:
    """Why a summary.json cannot be reported as it stands (a value of the wrong type, odd overrides), or None.
    Metric values (keys with a ``/``) are numbers or null; a report never guesses what a string meant."""
    if not isinstance(summary.get("status"), str):
        return f"status is {summary.get('status')!r}, not a string"
    overrides = summary.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        return f"overrides is {overrides!r}, not a list of key=value strings"
    for key in ("steps", "seed"):
        if key in summary and summary[key] is not None and not is_int(summary[key]):
            return f"{key} is {summary[key]!r}, not an integer"
    for key, value in summary.items():
        if ("/" in key or key.startswith(("steps_to_", "seconds_to_")) or key == "target_value") \
                and not _is_number_or_none(value):
            return f"{key} is {value!r}, not a number"
    return None


def _job_key(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, str(path))


def _read_metrics(path: Path) -> tuple[list[dict], int]:
    """The records of a metrics.jsonl and the number of lines that did not parse (a truncated write)."""
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and is_int(record.get("step")) and all(
                _is_number_or_none(v) for k, v in record.items() if "/" in k):
            records.append(record)
        else:
            bad += 1
    return records, bad


def load_runs(sweep_dir: str | Path, problems: Optional[list[str]] = None) -> list[RunRecord]:
    """Every run directory (holding summary.json) below ``sweep_dir``, in job order.

    A run whose summary.json cannot be read is skipped; unreadable metrics lines (a write cut
    short by a full disk or a kill) are dropped. Each is described in ``problems`` when given.
    """
    runs = []
    for summary_path in sorted(Path(sweep_dir).rglob("summary.json"), key=lambda p: _job_key(p.parent)):
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
            odd = summary_problem(summary)
            if odd:
                raise ValueError(odd)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            if problems is not None:
                problems.append(f"{summary_path.parent}: skipped, unreadable summary.json ({err})")
            continue
        metrics_path = summary_path.parent / "metrics.jsonl"
        metrics: list[dict] = []
        if metrics_path.exists():
            metrics, bad = _read_metrics(metrics_path)
            if bad and problems is not None:
                problems.append(f"{summary_path.parent}: dropped {bad} unreadable line(s) of metrics.jsonl")
        runs.append(RunRecord(summary_path.parent, summary, metrics))
    _label(runs)
    return runs
