"""Benchmark: where one CPU thread trains faster than every core, the measurement behind ``threads=auto``.

Whole runs, as a user runs them (``precond-train``, optimizer steps, evaluations and the pack's
bookkeeping included), from a linear model to a CNN on MNIST images, alone and packed, each
with ``threads=1`` and with ``threads=<every core>``. The table gives each run's forward FLOPs
per training step (what ``threads=auto`` reads), the training seconds (the sum of the jobs'
``time/train_s``: start-up left out) at each count, their ratio, and the same runs with
``threads=auto``: its seconds, the count it picked, and its time over the faster fixed count's
(1.00: auto chose as well as hindsight).

``--loaded`` repeats the table while a competing CPU-bound process holds one core (started
and stopped by this script), as on a laptop or a shared login node; ``auto`` then measures
the busy core and counts only the free ones.

    python scripts/bench_threads.py [--loaded] [--cases digits_pack,cnn]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from precond.threads import SMALL_STEP_FLOPS, available_cores  # noqa: E402

MNIST_SHAPED = ["model=mlp", "model.widths=[256,256]", "dataset=synthetic_classification", "dataset.features=784",
                "dataset.classes=10", "dataset.n_train=20000", "dataset.n_val=2000", "dataset.n_test=0",
                "batch_size=128", "eval_every=200"]
#: name → (what it is, overrides, packed)
CASES = {
    "linear": ("linear model, synthetic (the default run)", ["steps=2000"], False),
    "linear_pack": ("linear model ×12, packed", ["steps=2000", "lr=0.01,0.03,0.1", "seed=0,1,2,3"], True),
    "digits": ("MLP 64-64 on digits", ["model=mlp", "dataset=digits", "steps=1500"], False),
    "digits_pack": ("MLP 64-64 on digits ×12, packed", ["model=mlp", "dataset=digits", "steps=1500",
                                                        "preconditioner=sgd,adam", "lr=0.001,0.01,0.03",
                                                        "seed=0,1"], True),
    "mnist_mlp": ("MLP 784-256-256, batch 128", [*MNIST_SHAPED, "steps=600"], False),
    "mnist_mlp_pack": ("MLP 784-256-256 ×8, packed", [*MNIST_SHAPED, "steps=400", "lr=0.001,0.002,0.005,0.01",
                                                     "seed=0,1"], True),
    "cnn": ("CNN 32-64 on MNIST (5k), batch 64", ["model=cnn", "dataset=mnist5k", "batch_size=64", "steps=150",
                                                  "eval_every=150"], False),
}


def train_seconds(overrides: list[str], packed: bool, threads) -> tuple[float, float, int]:
    """Training seconds (sum of the jobs' ``time/train_s``), forward FLOPs per step and the thread
    count the runs used, of one sweep."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "precond.run.entry", "-m", f"hydra.sweep.dir={tmp}", "progress=false",
                f"threads={threads}", *(["hydra/launcher=packed"] if packed else []), *overrides]
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"sweep failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-2000:]}")
        summaries = [json.loads(p.read_text()) for p in Path(tmp).glob("*/summary.json")]
    step_flops = summaries[0]["step_flops"] * summaries[0].get("packed", 1)  # a pack's step: every job's
    return sum(s["time/train_s"] for s in summaries), step_flops, summaries[0]["threads"]


def table(names: list[str]) -> None:
    cores = available_cores()
    print(f"\n| run | forward FLOPs per step | 1 thread s | {cores} threads s | ×(1 thread / {cores}) | "
          "threads=auto s (count) | ×(auto / faster fixed) |\n|---|---|---|---|---|---|---|")
    for name in names:
        label, overrides, packed = CASES[name]
        one, flops, _ = train_seconds(overrides, packed, 1)
        every, _, _ = train_seconds(overrides, packed, cores)
        auto, _, picked = train_seconds(overrides, packed, "auto")
        print(f"| {label} | {flops:.2g} | {one:.2f} | {every:.2f} | {one / every:.2f} | {auto:.2f} ({picked}) | "
              f"{auto / min(one, every):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loaded", action="store_true", help="with a competing CPU-bound process")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {list(CASES)}")
    args = parser.parse_args()
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; expected names from {list(CASES)}")
    print(f"threads=auto: 1 thread below {SMALL_STEP_FLOPS:.0e} forward FLOPs per step, else the free cores "
          f"(of {available_cores()} available)")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.loaded else None
    try:
        print("\nloaded: a competing CPU-bound process runs throughout" if busy else "\nquiet machine")
        table(names)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


if __name__ == "__main__":
    main()
