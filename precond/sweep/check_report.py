"""The report of a check script (a closed-form or curvature experiment run outside the tuned sweeps).

Writes ``comparison.md`` (title, what was run, tables, plots, the verdict lines) and ``verdicts.json``
(every :class:`~precond.sweep.verdicts.Verdict`), the two files ``make results`` collects.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from precond.sweep.verdicts import Verdict


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_check_report(out: Path, name: str, sections: Sequence[str], verdicts: Sequence[Verdict]) -> str:
    """Write ``out/comparison.md`` and ``out/verdicts.json``; return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# {name}\n\n" + "\n\n".join(s.strip() for s in sections) + "\n\n## Verdicts\n\n"
            + "".join(f"- {v.line()}\n" for v in verdicts))
    (out / "comparison.md").write_text(text, encoding="utf-8")
    (out / "verdicts.json").write_text(json.dumps([v.as_dict() for v in verdicts], indent=2) + "\n", encoding="utf-8")
    return text


def fmt(x, digits: int = 3) -> str:
    """A number for a table: ``—`` for None, ``∞`` for inf, else ``digits`` significant digits."""
    if x is None:
        return "—"
    if x == float("inf"):
        return "∞"
    return f"{x:.{digits}g}"
