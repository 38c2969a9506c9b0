"""Stability of the verdicts as a measured property: every tuned experiment re-confirmed on fresh seed draws.

For each tuned experiment that declares claims, the confirmation stage runs again on each further draw of
confirmation seeds (default starting at 200 and at 300, as many as the experiment declares, with its stages:
disjoint from the committed 100–139), with the tuning
reused: the tuning runs of ``outputs/results/<name>`` (left by ``make results``) are hard-linked into
``outputs/stability/<name>``, so the selection, and therefore the chosen settings, are those of the committed
result. Each draw is judged by today's rule and claims. The script prints per claim the committed verdict and
the verdict on each draw, and writes the same as ``docs/stability.md`` (with ``--only``, as
``outputs/stability/stability_only.md``: the page covers every experiment). A stability sweep dir made from an
earlier result (``make results`` ran since) is removed first, so its draws run again on today's code; one made
from today's result is kept, so an interrupted run resumes:

* **kept**: the share of decisive committed verdicts (holds, noninferior, fails) whose state is the same on
  every draw — the figure the README states;
* **flips**: any ``holds``/``noninferior`` ↔ ``fails`` change between draws (the rule must never allow one).

    python scripts/stability.py [--only NAME ...] [--draws 200 300] [--jobs N]

Experiments run side by side as in ``make results`` (``--jobs``, default one per core, each with ``cores // jobs``
threads); an experiment's draws run one after the other, in its one sweep dir.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "outputs" / "results"
OUT = ROOT / "outputs" / "stability"
DOCS = ROOT / "docs" / "results"
REPORT = ROOT / "docs" / "stability.md"
DECISIVE = ("holds", "noninferior", "fails")
POSITIVE = ("holds", "noninferior")


def tuned_experiments() -> list[str]:
    """The tuned experiments of ``make results`` that declare claims, in its order."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from results import TUNED, experiment_claims

    return [name for name in TUNED if experiment_claims(name)]


def committed_seeds(name: str) -> list:
    """The confirmation seeds an experiment declares (a draw has as many, so that its stages still apply)."""
    import yaml

    config = yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text(encoding="utf-8"))
    return config["hydra"]["sweeper"].get("confirmation_seeds") or list(range(100, 110))


#: in a stability sweep dir: which result of ``make results`` its tuning runs and draws were made from
DERIVED_FROM = "derived_from.json"


def result_identity(name: str) -> dict:
    """What identifies the result a stability run starts from: its ``selection.json`` (written once per run of
    the experiment in ``make results``), by size and modification time; ``{}`` where there is none."""
    selection = RESULTS / name / "selection.json"
    if not selection.exists():
        return {}
    stat = selection.stat()
    return {"selection_bytes": stat.st_size, "selection_mtime_ns": stat.st_mtime_ns}


def drop_stale(name: str) -> bool:
    """Remove ``name``'s stability sweep dir when it was made from another result than today's (``make results``
    ran since: the old draws would be reported as finished, not run again on today's code); returns whether
    it did. A dir from the same result is kept, so an interrupted stability run resumes."""
    sweep = OUT / name
    marker = sweep / DERIVED_FROM
    current = result_identity(name)
    recorded = json.loads(marker.read_text(encoding="utf-8")) if marker.exists() else None
    stale = sweep.exists() and recorded != current
    if stale:
        shutil.rmtree(sweep)
        for log in OUT.glob(f"{name}_*.log"):
            log.unlink()
    sweep.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(current), encoding="utf-8")
    return stale


def reuse_tuning(name: str) -> str:
    """Hard-link the committed result's tuning runs into the stability sweep dir (a copy where links fail)."""
    source, target = RESULTS / name / "tuning", OUT / name / "tuning"
    if target.exists() or not source.exists():
        return "reused" if target.exists() else (f"not found in {source.parent} (one-point grids have none; "
                                                 "otherwise run `make results` first, or the tuning runs again)")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, target, copy_function=_link)
    except OSError:
        shutil.copytree(source, target, dirs_exist_ok=True)
    return "reused"


def _link(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


def confirm(name: str, seeds: list[int], env: dict | None = None) -> tuple[list[dict], float, int]:
    """Run ``name``'s sweep on the confirmation ``seeds`` in its stability dir; return its verdicts on them."""
    sweep = OUT / name
    t0 = time.perf_counter()
    seeds_text = "[" + ",".join(str(s) for s in seeds) + "]"
    proc = subprocess.run([sys.executable, "-m", "precond.run.entry", f"experiment={name}",
                           f"hydra.sweep.dir={sweep}", f"hydra.sweeper.confirmation_seeds={seeds_text}",
                           "progress=false"], cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    (OUT / f"{name}_{seeds[0]}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    verdicts_path = sweep / "verdicts.json"
    verdicts = json.loads(verdicts_path.read_text(encoding="utf-8")) if verdicts_path.exists() else []
    if verdicts:
        shutil.copy(verdicts_path, sweep / f"verdicts_{seeds[0]}.json")
    return verdicts, seconds, proc.returncode


def summarize(rows: list[dict]) -> dict:
    """The share of decisive committed verdicts kept on every draw, and the holds ↔ fails flips."""
    decisive = [r for r in rows if r["committed"] in DECISIVE]
    kept = [r for r in decisive if all(d == r["committed"] for d in r["draws"])]
    flips = [r for r in rows
             if any(a in POSITIVE and b == "fails" or a == "fails" and b in POSITIVE
                    for a in [r["committed"], *r["draws"]] for b in [r["committed"], *r["draws"]])]
    return {"decisive": len(decisive), "kept": len(kept), "flips": len(flips),
            "share": len(kept) / len(decisive) if decisive else float("nan")}


def write_report(rows: list[dict], draws: list[list[int]], seconds: float, command: str,
                 path: Path = REPORT) -> str:
    s = summarize(rows)
    heads = " | ".join(f"draw from seed {d[0]}" for d in draws)
    lines = ["# Stability of the verdicts on fresh seed draws", "",
             f"`{command}` — {seconds / 60:.1f} min. Every tuned experiment re-confirmed on "
             f"{len(draws)} further draws of confirmation seeds, tuning and selection reused from the committed "
             "result, judged by today's rule and claims.", "",
             f"**{s['kept']} of {s['decisive']} decisive verdicts (holds, noninferior, fails) keep their state on "
             f"every draw: {100 * s['share']:.0f} %. holds ↔ fails flips: {s['flips']}.**", "",
             f"| experiment | claim | role | committed (from seed 100) | {heads} | kept |",
             "|---|---|---|---|" + "---|" * len(draws) + "---|"]
    for r in rows:
        kept = "—" if r["committed"] not in DECISIVE else ("yes" if all(d == r["committed"] for d in r["draws"])
                                                           else "**no**")
        lines.append(f"| {r['experiment']} | {r['claim']} | {r['role']} | {r['committed']} | "
                     + " | ".join(r["draws"]) + f" | {kept} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def experiment_rows(name: str, firsts: list[int], env: dict) -> tuple[list[dict], list[list[int]]]:
    """Every draw of ``name`` (one after the other: they share its sweep dir), as one row per committed claim."""
    committed = json.loads((DOCS / name / "verdicts.json").read_text(encoding="utf-8"))
    if drop_stale(name):
        print(f"{name}: the stability runs of an earlier result removed (make results ran since)", flush=True)
    print(f"{name}: tuning {reuse_tuning(name)}", flush=True)
    count = len(committed_seeds(name))
    draws = [list(range(first, first + count)) for first in firsts]
    per_draw = []
    for seeds in draws:
        verdicts, seconds, code = confirm(name, seeds, env)
        print(f"{name} seeds {seeds[0]}–{seeds[-1]}: exit {code} in {seconds:.0f} s", flush=True)
        per_draw.append({v["claim"]: v["verdict"] for v in verdicts})
    rows = []
    for v in committed:
        role = (v.get("effect") or {}).get("role", "identity" if v["verdict"] == "identity" else "—")
        rows.append({"experiment": name, "claim": v["claim"], "role": role, "committed": v["verdict"],
                     "draws": [d.get(v["claim"], "missing") for d in per_draw]})
    return rows, draws


def main() -> None:
    from results import experiment_env, recorded_seconds

    from precond.threads import available_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="these experiments only")
    parser.add_argument("--draws", nargs="*", type=int, default=[200, 300], help="first seed of each draw")
    parser.add_argument("--jobs", type=int, default=available_cores(), help="experiments run at once (default: "
                        "the cores this process may use); each gets cores // jobs threads")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs: expected a positive integer, got {args.jobs}")
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    names = [name for name in tuned_experiments() if not args.only or name in args.only]
    env = experiment_env(args.jobs)
    # the longest first (by the committed result's wall time), so that no long experiment starts last
    longest_first = sorted(names, key=lambda name: -recorded_seconds(name))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = dict(zip(longest_first, pool.map(lambda name: experiment_rows(name, args.draws, env),
                                                longest_first)))
    rows = [row for name in names for row in done[name][0]]
    draws = done[names[-1]][1] if names else []
    command = "python scripts/stability.py" + "".join(f" {a}" for a in sys.argv[1:])
    # docs/stability.md states every experiment's stability: a run of some of them writes beside its runs
    path = REPORT if not args.only else OUT / "stability_only.md"
    print(write_report(rows, draws, time.perf_counter() - t0, command, path))
    if args.only:
        print(f"wrote {path.relative_to(ROOT)} (--only: docs/stability.md, which covers every experiment, is left "
              "as it was)")


if __name__ == "__main__":
    main()
