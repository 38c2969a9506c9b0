"""Do the defaults train? Every model family × bundled dataset × preconditioner at its default lr.

One seed per cell, each preconditioner at ``model.default_lr`` and each dataset's own target,
run through the entry point (one sweep per model and dataset). Prints a Markdown table of the
final target metric per cell (``*`` when the run reached and held the target, ``div`` when it
diverged) and writes it to ``--out/defaults.md``. Conv nets need image data, so they skip the
synthetic sets; ResNet-18 (11M parameters) is left to a GPU (``--models resnet18``).

    python scripts/check_defaults.py                              # CPU: 20-30 min on 2 cores (mostly ResNet-20)
    python scripts/check_defaults.py --models mlp --datasets mnist5k --steps 300
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MODELS = ("linear", "mlp", "cnn", "resnet")
DATASETS = ("synthetic", "synthetic_classification", "digits", "mnist5k")
PRECONDITIONERS = ("sgd", "adagrad", "rmsprop", "adam", "bnp")
IMAGE_MODELS = ("cnn", "resnet", "resnet18")


def run_sweep(model: str, dataset: str, steps: int, out: Path) -> dict:
    """The five preconditioners on one model and dataset; returns preconditioner → summary."""
    from hydra.core.global_hydra import GlobalHydra

    from precond.run.entry import main

    sweep = out / f"{model}_{dataset}"
    argv = ["precond-train", "-m", f"model={model}", f"dataset={dataset}",
            f"preconditioner={','.join(PRECONDITIONERS)}", f"steps={steps}", f"eval_every={max(steps // 20, 1)}",
            "progress=false", f"hydra.sweep.dir={sweep}"]
    old, sys.argv = sys.argv, argv
    try:
        GlobalHydra.instance().clear()
        main()
    except SystemExit:
        pass
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()
    found = {}
    for path in sweep.rglob("summary.json"):
        summary = json.loads(path.read_text())
        choice = summary.get("choices", {}).get("preconditioner")
        if choice:
            found[choice] = summary
    return found


def cell(summary: dict | None) -> str:
    if summary is None:
        return "—"
    if summary["status"] != "completed":
        return "div" if summary["status"] == "diverged" else summary["status"]
    value = summary.get(summary["target_metric"])
    held = "*" if summary.get("steps_to_target") is not None else ""
    return f"{value:.3g}{held}" if value is not None else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", default="outputs/defaults")
    args = parser.parse_args()
    out = Path(args.out)
    rows = ["| model | dataset (target) | " + " | ".join(PRECONDITIONERS) + " |",
            "|---|---|" + "---|" * len(PRECONDITIONERS)]
    start = time.time()
    for model in args.models.split(","):
        for dataset in args.datasets.split(","):
            if model in IMAGE_MODELS and dataset.startswith("synthetic"):
                continue
            found = run_sweep(model, dataset, args.steps, out)
            any_run = next(iter(found.values()), {})
            target = f"{any_run.get('target_metric')} {any_run.get('target_value')}"
            rows.append(f"| {model} | {dataset} ({target}) | " + " | ".join(cell(found.get(p)) for p in PRECONDITIONERS)
                        + " |")
    table = "\n".join(rows)
    note = (f"\n\n{args.steps} steps, seed 0, each preconditioner at the model's default_lr; final value of the "
            f"dataset's target metric, * = reached and held the target, div = diverged. {time.time() - start:.0f} s.\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "defaults.md").write_text(table + note, encoding="utf-8")
    print(table + note)


if __name__ == "__main__":
    main()
