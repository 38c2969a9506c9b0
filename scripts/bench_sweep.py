"""Sweep throughput: the same sweep with the basic and the packed launcher, in one invocation.

Each sweep runs as a user would run it (``precond-train -m ... hydra/launcher=basic|packed``, a
fresh process each, start-up included) into its own directory; the table gives the wall time of
each, the wall-time ratio, the ratio above the *floor* (the wall of a one-job, one-step sweep:
interpreter, imports, composition, report and exit, which every sweep pays once), the sum of
the jobs' ``time/train_s``, and how many jobs end with the same final ``val/loss`` (relative
1e-4) in both. In float32, runs at aggressive learning rates are chaotic: a 1e-7 difference in
summation order grows to O(1) within a few hundred steps, so a few jobs may differ; the float64
equivalence tests (tests/test_packing.py) are the exact check.

A second table runs the main tuned experiment (``experiment=compare_preconditioners``, the
job of ``make run``: tuning and confirmation runs, curvature monitors, report and verdicts)
with each launcher and sets its wall time against the sum of its runs' ``time/train_s``.

The sweeps: the default problem, an MLP on digits, and a BatchNorm-and-BNP MLP sweep shaped
like ``bn_vs_bnp_mlp`` (48 jobs each). On CPU they run twice: on a quiet machine, and *loaded*,
with a competing CPU-bound process running throughout (started and stopped here), as on a
laptop, a shared login node or a CI runner.

On a GPU (``--device cuda``) it adds the 100-job MNIST-shaped MLP sweep and ResNet-18
training throughput on CIFAR-shaped data with each fast-path option on and off.

    python scripts/bench_sweep.py                      # CPU: three 48-job sweeps, quiet and loaded, + tuned job
    python scripts/bench_sweep.py --device cuda        # + 100-job MLP sweep and ResNet-18 images/s
    python scripts/bench_sweep.py --cases default --steps 300 --no-tuned --quiet-only   # a quick look
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: name → (overrides of a 48-job sweep, what it is)
CASES = {
    "default": (["preconditioner=sgd,adagrad,rmsprop,adam", "lr=0.01,0.03,0.1", "seed=0,1,2,3"],
                "default problem (linear, synthetic), 4 preconditioners × 3 lr × 4 seeds"),
    "digits": (["model=mlp", "dataset=digits", "preconditioner=sgd,adam", "lr=0.001,0.003,0.01,0.03",
                "seed=0,1,2,3,4,5", "target.metric=val/acc", "target.value=0.9"],
               "MLP 64-64 on digits, 2 preconditioners × 4 lr × 6 seeds"),
    "mnist_mlp": (["model=mlp", "model.widths=[256,256]", "dataset=synthetic_classification", "dataset.features=784",
                   "dataset.classes=10", "dataset.n_train=60000", "dataset.n_val=10000", "dataset.n_test=0",
                   "batch_size=128", "preconditioner=adam", "lr=0.0001,0.0002,0.0005,0.001,0.002,0.005,0.01,0.02,"
                   "0.05,0.1", "seed=0,1,2,3,4,5,6,7,8,9", "target.metric=val/acc", "target.value=0.9"],
                  "MNIST-shaped MLP 784-256-256-10, Adam, 10 lr × 10 seeds"),
    "bn_bnp": (["model=mlp", "dataset=mnist5k", "normalization.standardize_inputs=true",
                "normalization_arm=batchnorm,bnp", "batch_size=32", "eval_every=50", "eval_train_samples=500",
                "lr=0.003,0.01,0.03,0.1",
                "seed=0,1,2,3,4,5", "target.metric=val/acc", "target.value=0.9"],
               "MLP 64-64 on the MNIST subset, BatchNorm and BNP (SGD momentum), 2 arms × 4 lr × 6 seeds"),
}
DEFAULT_STEPS = {"default": 1500, "digits": 1500, "mnist_mlp": 2000, "bn_bnp": 400}


#: the main tuned experiment (``make run``)
TUNED = "compare_preconditioners"


LOGS: dict[Path, tuple[float, float, str]] = {}  # sweep dir → (start, end, stdout) of its process


def run_sweep(launcher: str, overrides: list[str], sweep_dir: Path) -> float:
    """Wall seconds of one sweep run as a user runs it (a fresh interpreter)."""
    multirun = [] if any(o.startswith("experiment=") for o in overrides) else ["-m"]  # an experiment sets it
    args = [sys.executable, "-m", "precond.run.entry", *multirun, f"hydra/launcher={launcher}",
            f"hydra.sweep.dir={sweep_dir}", "progress=false", "logger=none", *overrides]
    start, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    LOGS[sweep_dir] = (start, start + wall, proc.stdout)
    return wall


#: a job's end line (``[job 3] status=…``, named since jobs print their label) or a tuned sweep's batch line
RESULT_LINE = re.compile(r"(\[[^\]]*\] )?status=|(tuning|confirmation)[^:]* done: ")


def timeline(sweep_dir: Path) -> list[tuple[str, float]]:
    """Where a packed sweep's wall time went, from its own log's timestamps (ms resolution): up to
    each "Launching" line (start-up, or the previous batch's results and the next batch's
    composition), to its "training … as one pack" line (placing the jobs, building the members),
    to its first result line (training, evaluations, monitors, final files); after the last
    result line, the report(s) and the exit."""
    start, end, out = LOGS[sweep_dir]
    events = []
    for line in out.splitlines():
        if not line.startswith("[20"):
            continue
        stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        text = line[33:]
        if text.startswith("Launching"):
            events.append(("launch", stamp))
        elif text.startswith("training") and "as one pack" in text:
            events.append(("pack", stamp))
        elif RESULT_LINE.match(text) and (not events or events[-1][0] != "result"):
            events.append(("result", stamp))
    phases, last = [], start
    names = {"launch": "start-up, composing and checking the batch", "pack": "placing the jobs, building the members",
             "result": "training the pack (steps, evaluations, monitors, final files)"}
    previous = None
    for kind, stamp in events:
        label = names[kind] if not phases or kind != "launch" else "results, selection, composing the next batch"
        if kind == "pack" and previous == "pack":  # a tuned batch logs no per-job results: the next pack's line
            label = names["result"] + ", then building the next pack"  # ends the previous pack's training
        phases.append((label, stamp - last))
        last, previous = stamp, kind
    phases.append(("report(s) and exit", end - last))
    return phases


def torch_import_s() -> float:
    """Seconds of ``import torch`` in a fresh interpreter (the part of start-up no launcher can cut)."""
    code = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def print_timeline(title: str, sweep_dir: Path, torch_s: float) -> None:
    """The phases of one packed sweep, and its time outside ``import torch`` and its packs' training."""
    phases = timeline(sweep_dir)
    total = sum(s for _, s in phases)
    print(f"\ntimeline of the packed {title} ({total:.1f} s):\n\n| phase | s |\n|---|---|")
    for label, seconds in phases:
        print(f"| {label} | {seconds:.2f} |")
    training = sum(s for label, s in phases if label.startswith("training"))
    print(f"\noutside `import torch` ({torch_s:.2f} s) and the packs' training: "
          f"**{total - torch_s - training:.2f} s**")


def summaries(sweep_dir: Path) -> dict[str, dict]:
    """Every run's summary by its place below the sweep dir (``7``, or ``tuning/adam/lr=0.1/seed=0``)."""
    return {p.parent.relative_to(sweep_dir).as_posix(): json.loads(p.read_text())
            for p in sweep_dir.rglob("summary.json")}


def compare_sweeps(case: str, overrides: list[str], workdir: Path) -> dict:
    walls, sums = {}, {}
    for launcher in ("basic", "packed"):
        sweep_dir = workdir / f"{case}_{launcher}"
        walls[launcher] = run_sweep(launcher, overrides, sweep_dir)
        sums[launcher] = summaries(sweep_dir)
    basic, packed = sums["basic"], sums["packed"]
    if set(basic) != set(packed):
        raise SystemExit(f"{case}: the two sweeps have different jobs")

    def same(a: dict, b: dict) -> bool:
        if a["status"] != b["status"] or a["status"] != "completed":
            return a["status"] == b["status"]
        return abs(a["val/loss"] - b["val/loss"]) <= 1e-4 * abs(a["val/loss"])

    return {"case": case, "jobs": len(basic), "basic_s": walls["basic"], "packed_s": walls["packed"],
            "basic_train_s": sum(s["time/train_s"] for s in basic.values()),
            "packed_train_s": sum(s["time/train_s"] for s in packed.values()),
            "same": sum(same(s, packed[k]) for k, s in basic.items())}


@contextlib.contextmanager
def competing_process(on: bool):
    """A CPU-bound process (a busy loop) for the duration, as on a laptop or a shared login node."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if on else None
    try:
        yield
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def sweep_table(title: str, cases: list[str], steps_override, device: str, workdir: Path, floor: float) -> None:
    """Basic against packed for each case, one row each."""
    print(f"\n{title}\n\n| sweep | jobs | steps | basic wall s | packed wall s | basic / packed | above the floor | "
          "basic Σ train s | packed Σ train s | Σ train ratio | same final val/loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        overrides, _ = CASES[case]
        steps = steps_override or DEFAULT_STEPS[case]
        row = compare_sweeps(case, [*overrides, f"steps={steps}", f"device={device}"], workdir)
        print(f"| {case} | {row['jobs']} | {steps} | {row['basic_s']:.1f} | {row['packed_s']:.1f} | "
              f"**{row['basic_s'] / row['packed_s']:.2f}×** | "
              f"{(row['basic_s'] - floor) / (row['packed_s'] - floor):.2f}× | {row['basic_train_s']:.1f} | "
              f"{row['packed_train_s']:.1f} | {row['basic_train_s'] / row['packed_train_s']:.1f}× | "
              f"{row['same']}/{row['jobs']} |", flush=True)


def tuned_table(device: str, workdir: Path) -> None:
    """The main tuned experiment with each launcher: wall, Σ train, wall / Σ train, and basic / packed."""
    row = compare_sweeps(TUNED, [f"experiment={TUNED}", f"device={device}"], workdir)
    print(f"\n| {TUNED} (tuned) | runs | launcher | wall s | Σ train s | wall / Σ train |\n|---|---|---|---|---|---|")
    for launcher in ("basic", "packed"):
        wall, train = row[f"{launcher}_s"], row[f"{launcher}_train_s"]
        print(f"| | {row['jobs']} | {launcher} | {wall:.1f} | {train:.1f} | **{wall / train:.2f}×** |", flush=True)
    print(f"\nbasic / packed wall: **{row['basic_s'] / row['packed_s']:.2f}×**; same final val/loss: "
          f"{row['same']}/{row['jobs']}")


def resnet_throughput(device: str, batch: int, steps: int, precision: str, channels_last: bool,
                      compile_model: bool) -> float:
    """Training images/s of ResNet-18 (BatchNorm) on CIFAR-shaped data resident on the device, SGD momentum."""
    import torch

    from precond.models import resnet
    from precond.optim import build_optimizer
    from precond.run.loop import autocast

    dev = torch.device(device)
    torch.manual_seed(0)
    model = resnet((3, 32, 32), 10, normalization="batchnorm", arch="resnet18").to(dev)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    if compile_model:
        model.compile()
    x = torch.randn(batch * 4, 3, 32, 32, device=dev).to(memory_format=layout)
    y = torch.randint(0, 10, (batch * 4,), device=dev)
    optimizer = build_optimizer(model.parameters(), "sgd", lr=0.05, momentum=0.9)
    loss_fn = torch.nn.functional.cross_entropy

    def step(i: int) -> None:
        xb, yb = x[(i % 4) * batch:(i % 4 + 1) * batch], y[(i % 4) * batch:(i % 4 + 1) * batch]

        def closure():
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision, dev):
                loss = loss_fn(model(xb), yb)
            loss.backward()
            return loss

        optimizer.step(closure)

    for i in range(3 if compile_model else 2):  # warm-up (and compilation)
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=None, help="comma-separated: default,digits,bn_bnp,mnist_mlp (default: "
                        "the first three on CPU; all four on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="steps per job (default: 1500, MNIST MLP 2000)")
    parser.add_argument("--no-tuned", action="store_true", help=f"skip the tuned experiment ({TUNED})")
    parser.add_argument("--loaded", action="store_true", help="also run the sweeps with a competing CPU-bound "
                        "process (on by default on CPU)")
    parser.add_argument("--quiet-only", action="store_true", help="skip the loaded table")
    parser.add_argument("--resnet", action="store_true", help="ResNet-18 images/s (on by default on CUDA)")
    parser.add_argument("--resnet-batch", type=int, default=512)
    parser.add_argument("--resnet-steps", type=int, default=50)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    cases = args.cases.split(",") if args.cases else (["default", "digits", "bn_bnp", "mnist_mlp"] if cuda else
                                                        ["default", "digits", "bn_bnp"])
    args.loaded = (args.loaded or not cuda) and not args.quiet_only
    import torch

    print(f"# sweep throughput: torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(args.device)})" if cuda else f" ({torch.get_num_threads()} threads)"))
    with tempfile.TemporaryDirectory() as tmp:
        floor = run_sweep("basic", ["steps=1", "eval_every=1", f"device={args.device}"], Path(tmp) / "floor")
        print(f"\nfloor (one job, one step: start-up, composition, report, exit): {floor:.1f} s")
        sweep_table("quiet machine", cases, args.steps, args.device, Path(tmp) / "quiet", floor)
        torch_s = torch_import_s()
        for case in cases:
            print_timeline(f"{case} sweep", Path(tmp) / "quiet" / f"{case}_packed", torch_s)
        if args.loaded:
            with competing_process(True):
                sweep_table("loaded: a competing CPU-bound process runs throughout", cases, args.steps, args.device,
                            Path(tmp) / "loaded", floor)
        if not args.no_tuned:
            tuned_table(args.device, Path(tmp))
            print_timeline(f"{TUNED} experiment", Path(tmp) / f"{TUNED}_packed", torch_s)
    for case in cases:
        print(f"\n{case}: {CASES[case][1]}")
    if cuda or args.resnet:
        print(f"\n| ResNet-18, CIFAR-shaped, batch {args.resnet_batch} | images/s |\n|---|---|")
        for label, precision, channels_last, compile_model in (
                ("fp32 eager", "fp32", False, False), ("bf16 eager", "bf16", False, False),
                ("bf16 + channels_last", "bf16", True, False),
                ("bf16 + channels_last + compile", "bf16", True, True)):
            rate = resnet_throughput(args.device, args.resnet_batch, args.resnet_steps, precision, channels_last,
                                     compile_model)
            print(f"| {label} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
