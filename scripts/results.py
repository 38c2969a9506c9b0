"""Regenerate the Results page, docs/results.md (``make results``), on CPU.

Each experiment's result depends on two sets of inputs, fingerprinted apart (see :func:`fingerprints`):

* **training** — the package's training code, the Hydra plugins, the configs (an experiment's claims
  excepted) and its check script: a change reruns the experiment into ``outputs/results/<name>``
  (deleted first, so nothing is reused) and copies its report and its evidence (``evidence.json.gz``:
  per run its arm, point, seed, final metrics and the traces the report draws) to ``docs/results/<name>/``;
* **judging** — the verdict rule, the statistics, the report code and the experiment's claims: a change
  only re-judges and re-renders the committed evidence, in seconds.

Then it writes the section of docs/results.md between its ``<!-- results:start -->`` and ``<!-- results:end -->``
markers: a table of every verdict, then per claim the command, its wall time, the chosen hyperparameters
per arm, the tables, the plots and the verdict lines. Nothing is hand-pasted.

    python scripts/results.py [--only NAME ...] [--keep] [--fresh] [--jobs N]

The experiments that must train run ``--jobs`` at a time (default: one per core this process may use), the
longest first, each with ``cores // jobs`` CPU threads: their steps are small, so one thread per experiment
and the cores kept busy by several experiments beats one experiment at a time on every core. No claim is on
wall-clock time, so running side by side changes no verdict (only the recorded seconds, which say so).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from precond.metrics import TIME_TO_TARGET_RULE
from precond.sweep.check_report import rejudge_check_report
from precond.sweep.evidence import EVIDENCE, EvidenceError
from precond.sweep.tuned_report import effect_text, rejudge_tuned_report
from precond.sweep.tuning import FINAL_SELECTION_RULE, SELECTION_RULE
from precond.sweep.verdicts import RULE, STATES
from precond.threads import available_cores

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "outputs" / "results"
DOCS = ROOT / "docs" / "results"
RESULTS_PAGE = ROOT / "docs" / "results.md"  # the generated Results page (the README links to it)
#: where the experiment pages under docs/results/<name>/ link for the selection and verdict rules (stated once)
RULES_AT = "../../results.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
PY = sys.executable

#: (name, command) in the order of the Results page; tuned experiments run through the one entry point
EXPERIMENTS = [
    ("local_rate", [PY, "scripts/check_local_rate.py", "--out", "{out}"]),
    ("standardization", [PY, "scripts/check_standardization.py", "--out", "{out}"]),
    ("kappa_scaling", [PY, "scripts/check_kappa_scaling.py", "--out", "{out}"]),
    ("exponent_law", [PY, "scripts/check_exponent_law.py", "--out", "{out}"]),
    ("kappa_trajectory", [PY, "scripts/check_kappa_trajectory.py", "--out", "{out}"]),
    ("kappa_plus", [PY, "scripts/check_kappa_plus.py", "--out", "{out}"]),
    ("identities", [PY, "scripts/check_identities.py", "--out", "{out}"]),
    *((name, [PY, "-m", "precond.run.entry", f"experiment={name}", "hydra.sweep.dir={out}", "progress=false"])
      for name in ("compare_preconditioners", "momentum_vs_preconditioning", "standardization_vs_preconditioning",
                   "normalization_conditioning", "scale_invariance", "adam_l2_vs_adamw", "l1_sparsity",
                   "gradnorm_p_vs_z", "adam_eps_sensitivity", "bn_vs_bnp_mlp", "bn_vs_bnp_cnn", "bnp_sensitivity",
                   "nondiagonal_mlp")),
]
#: experiment → the check script that produces it (the tuned experiments run the entry point)
CHECK_SCRIPTS = {name: Path(command[1]).name for name, command in EXPERIMENTS if command[1].startswith("scripts/")}
#: the report files copied (and every plot, *.png, at the top of the output)
COPIED = ("comparison.md", "verdicts.json", "selection.json", EVIDENCE)
#: what a result depends on: the package, the Hydra plugins, the configs and the check scripts. A change to
#: any of these makes tests/test_results_current.py fail until `make results` regenerates the results
DEPENDS_ON = ("precond/**/*.py", "hydra_plugins/**/*.py", "conf/**/*.yaml", "scripts/check_local_rate.py",
              "scripts/check_standardization.py", "scripts/check_kappa_*.py", "scripts/check_identities.py",
              "scripts/check_exponent_law.py", "scripts/results.py")
#: (a check script counts only for the experiment it produces: see _counts)


#: the judging and report code: a change re-judges and re-renders the stored evidence, never retrains
JUDGING = ("precond/sweep/verdicts.py", "precond/sweep/stats.py", "precond/sweep/tuned_report.py",
           "precond/sweep/report.py", "precond/sweep/grid_report.py", "precond/sweep/grid_metrics.py",
           "precond/sweep/check_report.py", "precond/sweep/evidence.py", "precond/sweep/runs.py",
           "precond/sweep/labels.py", "scripts/results.py")
#: experiments whose verdicts are recomputed from stored evidence by today's rule: the tuned ones and the checks
#: that judge declared claims. The other checks decide their verdicts in the script (a fitted slope against its
#: prediction, with stats.py's fit): their reports are only re-rendered, and stats.py counts as their training
TUNED = tuple(name for name, command in EXPERIMENTS if command[1] == "-m")
JUDGED = (*TUNED, "kappa_trajectory", "kappa_plus", "identities")
REJUDGEABLE = tuple(name for name, _ in EXPERIMENTS)


def fingerprints(root: Path = ROOT, experiment: str | None = None) -> dict:
    """``{"training": sha256, "judging": sha256}`` of what ``experiment``'s result depends on. Training: the code,
    the configs and the check script (of conf/experiment/ only the experiment's own file, with its claims removed;
    of the check scripts only the one it runs). Judging: :data:`JUDGING` and the experiment's claims; a check that
    decides its verdicts in the script counts stats.py (its fit) as training. An experiment that cannot be
    re-judged (not in :data:`REJUDGEABLE`) counts its judging code as training too."""
    rejudgeable = experiment in REJUDGEABLE
    training, judging = hashlib.sha256(), hashlib.sha256()
    files = sorted({f for pattern in DEPENDS_ON for f in root.glob(pattern) if f.is_file() and _counts(f, experiment)})
    for f in files:
        rel, content = f.relative_to(root).as_posix(), f.read_bytes()
        if rejudgeable and f.parent.name == "experiment":
            content, claims = _split_claims(content)
            judging.update(b"claims\0" + claims + b"\0")
        judged_here = rel in JUDGING and (experiment in JUDGED or rel != "precond/sweep/stats.py")
        (judging if rejudgeable and judged_here else training).update(rel.encode() + b"\0" + content + b"\0")
    return {"training": training.hexdigest(), "judging": judging.hexdigest()}


def fingerprint(root: Path = ROOT, experiment: str | None = None) -> str:
    """The training fingerprint (kept under its old name for readers of older provenance)."""
    return fingerprints(root, experiment)["training"]


def _split_claims(content: bytes) -> tuple[bytes, bytes]:
    """An experiment file as (its training part, its claims), each canonical JSON: the claims
    (``hydra.sweeper.claims``) are judging inputs, everything else decides what is trained."""
    import yaml

    try:
        config = yaml.safe_load(content.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return content, b""
    if not isinstance(config, dict):
        return content, b""
    claims = ((config.get("hydra") or {}).get("sweeper") or {}).pop("claims", None)
    return (json.dumps(config, sort_keys=True, default=str).encode(),
            json.dumps(claims, sort_keys=True, default=str).encode())


def experiment_claims(name: str, root: Path = ROOT) -> list | None:
    """Today's claims of a tuned experiment, read from its config file (None when it declares none)."""
    import yaml

    config = yaml.safe_load((root / "conf" / "experiment" / f"{name}.yaml").read_text(encoding="utf-8"))
    return ((config.get("hydra") or {}).get("sweeper") or {}).get("claims")


def _counts(path: Path, experiment: str | None) -> bool:
    """Another experiment's config file or check script does not change this experiment's result."""
    if path.parent.name == "experiment":
        return path.stem == experiment
    if path.parent.name == "scripts" and path.name.startswith("check_"):
        return path.name == CHECK_SCRIPTS.get(experiment)
    return True


def provenance(out: Path, name: str, seconds: float) -> dict:
    """The commit (``-dirty`` when tracked files differ from it), both fingerprints, the wall time of the run, the
    torch version, the data the runs read, and the resolved config the experiment ran on (a tuned sweep's
    multirun.yaml)."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                             text=True).stdout.splitlines()
    # what make results writes itself (the reports, the Results page) does not make the tree dirty
    dirty = [line for line in changed if not line[3:].startswith(("docs/results/", "docs/results.md", "README.md"))]
    config = out / "multirun.yaml"
    prints = fingerprints(ROOT, name)
    commit += "-dirty" if dirty else ""
    return {"commit": commit, "trained_at": commit, "fingerprint": prints["training"],
            "judging_fingerprint": prints["judging"], "seconds": seconds, "torch": torch.__version__,
            "data": _data_of(config), "config": config.read_text(encoding="utf-8") if config.exists() else None}


def _data_of(config: Path) -> dict | str:
    """The dataset node the experiment's runs read (name, split sizes, data_seed), or where the check's data
    come from."""
    if not config.exists():
        return "generated by the check script (see its docstring)"
    import yaml

    dataset = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("dataset")
    return dataset if isinstance(dataset, dict) else "unknown"


def experiment_env(jobs: int) -> dict:
    """The environment of each experiment when ``jobs`` run at once: ``cores // jobs`` threads for the entry
    point (``PRECOND_THREADS``) and for the check scripts (``OMP_NUM_THREADS``), unless the caller set them."""
    threads = str(max(1, available_cores() // jobs))
    return {"PRECOND_THREADS": threads, "OMP_NUM_THREADS": threads, **os.environ}


def run(name: str, command: list[str], keep: bool, env: dict | None = None) -> dict:
    out = OUT / name
    if out.exists() and not keep:
        shutil.rmtree(out)
    argv = [part.replace("{out}", str(out)) for part in command]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    (OUT / f"{name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    docs = DOCS / name
    if docs.exists():
        shutil.rmtree(docs)
    docs.mkdir(parents=True)
    for file in [*COPIED, *sorted(p.name for p in out.glob("*.png"))]:
        if (out / file).exists():
            shutil.copy(out / file, docs / file)
    (docs / "provenance.json").write_text(json.dumps(provenance(out, name, seconds), indent=2) + "\n",
                                          encoding="utf-8")
    shown = " ".join(["python" if a == PY else a.replace(str(out), f"outputs/results/{name}") for a in argv])
    print(f"{name}: exit {proc.returncode} in {seconds:.0f} s", flush=True)
    return {"name": name, "command": shown, "seconds": seconds, "exit": proc.returncode}


def current(name: str) -> dict | None:
    """The committed provenance of ``name`` when its training inputs are today's and its evidence is stored (its
    verdicts can then be recomputed without training), else None."""
    path = DOCS / name / "provenance.json"
    if name not in REJUDGEABLE or not path.exists() or not (DOCS / name / EVIDENCE).exists():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8"))
    return recorded if recorded.get("fingerprint") == fingerprints(ROOT, name)["training"] else None


def rejudge(name: str, command: list[str], recorded: dict) -> dict:
    """Re-judge and re-render ``docs/results/<name>`` from its stored evidence; keep the run's wall time."""
    docs = DOCS / name
    t0 = time.perf_counter()
    if name in TUNED:
        rejudge_tuned_report(docs, experiment_claims(name), rules_at=RULES_AT)
    else:
        rejudge_check_report(docs)
    fresh = provenance(OUT / name, name, recorded.get("seconds", 0.0))
    recorded.setdefault("trained_at", recorded.get("commit"))  # the commit whose code trained the evidence
    recorded.update(commit=fresh["commit"], judging_fingerprint=fresh["judging_fingerprint"])
    (docs / "provenance.json").write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
    shown = " ".join(["python" if a == PY else a.replace("{out}", f"outputs/results/{name}") for a in command])
    print(f"{name}: re-judged from its evidence in {time.perf_counter() - t0:.1f} s", flush=True)
    return {"name": name, "command": shown, "seconds": recorded.get("seconds", 0.0), "exit": 0}


#: how each role reads on the Results page and in the README
ROLE_HEADINGS = (("primary", "Predictions of the theory (primary)"), ("control", "Controls"),
                 ("exploratory", "Exploratory (no prediction)"), ("check", "Checks decided by a script's own rule"),
                 ("identity", "Identities (true by construction, verified, not counted as support)"))
#: the README's one-row-per-experiment summary sits between these markers
SUMMARY_START, SUMMARY_END = "<!-- results-summary:start -->", "<!-- results-summary:end -->"


def role_of(v: dict) -> str:
    """A verdict's role; a check script's own verdict (a fitted slope against its prediction) has none."""
    return (v.get("effect") or {}).get("role", "identity" if v["verdict"] == "identity" else "check")


def section(results: list[dict], total: float, jobs: int = 1) -> str:
    """The Results page body: how it was made, the rule once, a row per experiment, every verdict grouped by
    role, and per experiment its command, time and a link to its own report (selection, confirmation, figures)."""
    trained = sum(r["seconds"] for r in results)
    lines = [START, "", f"Generated by `make results` (`python scripts/results.py`) on {platform.machine()} CPU, "
             f"torch {torch.__version__}, {available_cores()} cores: {jobs} experiment{'s' if jobs > 1 else ''} at a "
             f"time, {max(1, available_cores() // jobs)} thread{'s' if available_cores() // jobs > 1 else ''} each. "
             f"The experiments took {trained / 60:.1f} min to run (the sum of the times below, each measured while "
             f"the others ran beside it); this regeneration took "
             f"{total / 60:.1f} min (an experiment whose training inputs had not changed was re-judged from its "
             "stored evidence). Each tuned experiment searched every arm's own grid, chose by the stated rule and "
             "confirmed on fresh seeds. What the results say, in sentences: [findings.md](findings.md).", ""]
    every = [v for r in results for v in _verdicts(r["name"])]
    counts = {s: sum(v["verdict"] == s for v in every) for s in STATES}
    lines += [f"**{len(every)} claims: {counts['holds']} hold, {counts['noninferior']} non-inferior, "
              f"{counts['fails']} fail, {counts['equivalent']} equivalent, {counts['inconclusive']} inconclusive, "
              f"{counts['invalid']} invalid; {counts['identity']} identities (true by construction, verified, not "
              f"counted as support).** {_roles_line(every)}", "",
              "### The selection rule", "",
              f"Each arm of a tuned experiment: {SELECTION_RULE}. Claims with `selection: final` read their arms at "
              f"another point: {FINAL_SELECTION_RULE}. Time to target: {TIME_TO_TARGET_RULE}.", "",
              "### The verdict rule", "",
              f"Every paired claim: {RULE}. Role `check`: a verdict a check script decides by "
              "its own stated rule (a fitted slope's interval against its prediction, a closed form), outside the "
              "paired rule's families. The statistics are set out in [theory.md §7](theory.md); how experiments "
              "declare claims, roles and stages in [experiments.md](experiments.md).", "",
              "## By experiment", "", experiment_table(results, link="results/{name}/comparison.md"), ""]
    for role, heading in ROLE_HEADINGS:
        rows = [(r, v) for r in results for v in _verdicts(r["name"]) if role_of(v) == role]
        if not rows:
            continue
        lines += [f"## {heading}", "", "| experiment | claim | verdict | effect (estimate, interval) | p (Holm) |",
                  "|---|---|---|---|---|"]
        for r, v in rows:
            effect = effect_text(v["effect"]) if v.get("effect") else "—"
            p = "—" if v.get("p_value") is None else f"{v['p_value']:.3g} ({v['p_adjusted']:.3g})"
            lines.append(f"| [{r['name']}](#{r['name']}) | {v['claim']} | **{v['verdict']}** | "
                         f"{effect} | {p} |")
        lines.append("")
    lines += ["## The experiments", ""]
    for r in results:
        status = "" if r["exit"] == 0 else f" — **exit {r['exit']}** (see outputs/results/{r['name']}.log)"
        images = sorted(p.name for p in (DOCS / r["name"]).glob("*.png"))
        lines += [f"### {r['name']}", "", f"`{r['command']}` — {r['seconds']:.0f} s{status}. "
                  f"[Full report](results/{r['name']}/comparison.md) (selection, confirmation, every verdict's "
                  "reason)" + (": " + ", ".join(f"[{name[:-4].replace('_', ' ')}](results/{r['name']}/{name})"
                                                 for name in images) if images else "") + ".", ""]
    return "\n".join(lines + [END])


def experiment_table(results: list[dict], link: str) -> str:
    """One row per experiment: its verdicts counted by state, and a link to its report."""
    shown = ("holds", "noninferior", "fails", "equivalent", "inconclusive", "invalid", "identity")
    rows = ["| experiment | claims | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for r in results:
        verdicts = _verdicts(r["name"])
        cells = [str(sum(v["verdict"] == s for v in verdicts) or "") for s in shown]
        rows.append(f"| [{r['name']}]({link.format(name=r['name'])}) | {len(verdicts)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_readme_summary(results: list[dict], readme: Path = ROOT / "README.md") -> None:
    """The README's results summary: a row per experiment, linked to its report (between its markers)."""
    text = readme.read_text(encoding="utf-8")
    if SUMMARY_START in text and SUMMARY_END in text:
        head, rest = text.split(SUMMARY_START, 1)
        table = experiment_table(results, link="docs/results/{name}/comparison.md")
        readme.write_text(head + SUMMARY_START + "\n" + table + "\n" + SUMMARY_END + rest.split(SUMMARY_END, 1)[1],
                          encoding="utf-8")


def _roles_line(verdicts: list[dict]) -> str:
    """How the primary claims (the theory's predictions) came out, apart from controls and exploratory ones."""
    parts = []
    for role in ("primary", "control", "exploratory"):
        states = [v["verdict"] for v in verdicts if (v.get("effect") or {}).get("role") == role]
        if states:
            shown = ", ".join(f"{states.count(s)} {s}" for s in STATES if states.count(s))
            parts.append(f"{role} ({len(states)} tested): {shown}")
    return "By role — " + "; ".join(parts) + "." if parts else ""


def _verdicts(name: str) -> list[dict]:
    path = DOCS / name / "verdicts.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="run only these (the Results page keeps the others' last report)")
    parser.add_argument("--keep", action="store_true", help="resume into existing outputs instead of starting over")
    parser.add_argument("--fresh", action="store_true", help="rerun every experiment, even where only the judging "
                        "changed (the default re-judges those from their stored evidence)")
    parser.add_argument("--jobs", type=int, default=available_cores(), help="experiments trained at once "
                        "(default: the cores this process may use); each gets cores // jobs threads")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs: expected a positive integer, got {args.jobs}")
    OUT.mkdir(parents=True, exist_ok=True)
    timings = OUT / "timings.json"
    previous = json.loads(timings.read_text()) if timings.exists() else {}
    t0 = time.perf_counter()
    done, to_train = {}, []
    for name, command in EXPERIMENTS:
        if args.only and name not in args.only:
            recorded = _recorded(name)
            if recorded is not None or name in previous:
                done[name] = recorded or previous[name]
            continue
        recorded = None if args.fresh else current(name)
        try:
            if recorded is not None:
                done[name] = rejudge(name, command, recorded)
                continue
        except EvidenceError as err:
            print(f"{name}: {err}; rerunning it", flush=True)
        to_train.append((name, command))
    # the longest first (by the last recorded wall time), so that no long experiment starts last; one never
    # recorded (new) goes first of all: it may be the longest, and a long one started last leaves a core idle
    to_train.sort(key=lambda item: -(recorded_seconds(item[0]) or float(previous.get(item[0], {}).get("seconds", 0))
                                     or float("inf")))
    env = experiment_env(args.jobs)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(lambda item: run(*item, args.keep, env), to_train):
            done[result["name"]] = result
    for name, _ in to_train:  # the docs copy links to the rules (one thread: matplotlib draws the plots again)
        if name in TUNED and done[name]["exit"] == 0:
            rejudge_tuned_report(DOCS / name, experiment_claims(name), rules_at=RULES_AT)
    results = [done[name] for name, _ in EXPERIMENTS if name in done]
    total = time.perf_counter() - t0
    timings.write_text(json.dumps({r["name"]: r for r in results}, indent=2) + "\n")
    text = RESULTS_PAGE.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"docs/results.md has no {START} … {END} markers")
    head, rest = text.split(START, 1)
    RESULTS_PAGE.write_text(head + section(results, total, args.jobs) + rest.split(END, 1)[1], encoding="utf-8")
    write_readme_summary(results)
    import findings  # scripts/findings.py: scripts/ is on sys.path when this script runs

    findings.write(findings.load())
    print(f"docs/results.md, docs/findings.md and the README's summary regenerated ({total / 60:.1f} min)")
    if any(r["exit"] != 0 for r in results):
        raise SystemExit(1)


def recorded_seconds(name: str) -> float:
    """The wall time ``name`` took when its committed result was trained (0 when there is none)."""
    return float((_recorded(name) or {}).get("seconds", 0.0))


def _recorded(name: str) -> dict | None:
    """An experiment left out by --only, as its committed provenance describes it."""
    path = DOCS / name / "provenance.json"
    if not path.exists():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8"))
    command = dict(EXPERIMENTS)[name]
    shown = " ".join(["python" if a == PY else a.replace("{out}", f"outputs/results/{name}") for a in command])
    return {"name": name, "command": shown, "seconds": recorded.get("seconds", 0.0), "exit": 0}


if __name__ == "__main__":
    main()
