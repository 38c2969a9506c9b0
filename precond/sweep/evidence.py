"""An experiment's evidence: what its claims and its report read, kept compact beside the report.

Training decides the evidence; judging and rendering only read it. Keeping the evidence apart lets a change to
the verdict rule or to a report's layout re-judge and re-render a committed result in seconds, from
``evidence.json.gz``, instead of training every run again. What is kept:

* a tuned sweep: per run its path below the sweep dir and its whole ``summary.json`` (arm, stage, seed, the
  grid point as overrides, final metrics, times to target, κ …); for confirmation runs also the trace the
  report draws (``step``, ``time/train_s`` and the target metric at every evaluation), plus the problems met
  while reading the runs;
* a check script: the claims, the per-seed values they are judged on and the report's text sections.

The file is gzip-compressed JSON written atomically; a non-finite number (a check's κ = ∞, a NaN) is written as
``{"float": "inf"}`` and read back as that float.
"""
from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

from precond.sweep.runs import RunRecord, load_runs

EVIDENCE = "evidence.json.gz"
FORMAT = 1
#: the keys of a confirmation run's metric records that the report draws (besides the target metric)
TRACE_KEYS = ("step", "time/train_s")


class EvidenceError(ValueError):
    """Stored evidence that cannot be read or has another format: one line, naming the file."""


def collect_sweep(sweep_dir: str | Path) -> dict:
    """The evidence of a tuned sweep dir (see the module docstring)."""
    sweep_dir = Path(sweep_dir)
    problems: list[str] = []
    runs = []
    for run in load_runs(sweep_dir, problems):
        entry = {"path": run.path.relative_to(sweep_dir).as_posix(), "summary": run.summary}
        if run.summary.get("stage") == "confirmation":
            keys = (*TRACE_KEYS, run.summary.get("target_metric") or "val/loss")
            entry["metrics"] = [{k: r[k] for k in keys if k in r} for r in run.metrics]
        runs.append(entry)
    return {"format": FORMAT, "kind": "tuned", "runs": runs, "problems": problems}


def runs_of(evidence: dict, root: str | Path) -> list[RunRecord]:
    """The evidence's runs as the report reads them (paths below ``root``)."""
    return [RunRecord(Path(root) / r["path"], r["summary"], r.get("metrics", [])) for r in evidence["runs"]]


def write_evidence(path: str | Path, evidence: dict) -> Path:
    """Write ``evidence`` as gzip-compressed JSON, atomically (temp file + rename); mtime 0 so that the same
    evidence gives the same bytes."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(_encode(evidence), separators=(",", ":"), allow_nan=False).encode("utf-8")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write(data)
    os.replace(tmp, path)
    return path


def read_evidence(path: str | Path) -> dict:
    """The evidence stored at ``path``; :class:`EvidenceError` when it is missing, unreadable or of another format."""
    try:
        with gzip.open(path, "rb") as f:
            evidence = _decode(json.loads(f.read().decode("utf-8")))
    except (OSError, EOFError, ValueError) as err:
        raise EvidenceError(f"{path}: unreadable evidence ({err}); rerun the experiment") from None
    if not isinstance(evidence, dict) or evidence.get("format") != FORMAT:
        raise EvidenceError(f"{path}: evidence of another format (expected format {FORMAT}); rerun the experiment")
    return evidence


def _encode(x):
    """JSON has no ±∞ or NaN: such a float becomes ``{"float": "inf" | "-inf" | "nan"}``."""
    if isinstance(x, float) and not math.isfinite(x):
        return {"float": repr(x)}
    if isinstance(x, dict):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    return x


def _decode(x):
    if isinstance(x, dict):
        if len(x) == 1 and x.get("float") in ("inf", "-inf", "nan"):
            return float(x["float"])
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x
