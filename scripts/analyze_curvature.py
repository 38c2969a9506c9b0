"""Spectrum extremes of a finished run's final state, in p (H) and in z (PᵀHP).

Loads <run_dir>/config.yaml, model.pt and optimizer.pt, rebuilds the model,
data and optimizer exactly as the run did, measures both spaces on fixed
training batches, prints a table and writes <run_dir>/curvature.png (all
eigenvalues for small models, Ritz values otherwise).

    python scripts/analyze_curvature.py outputs/runs/<date>/<time>_<name> [--method auto] [--batches 4]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from precond.curvature import measure_curvature
from precond.errors import ConfigError
from precond.run.config import build_data, build_model, build_optimizer_from_settings, settings_from_plain
from precond.run.loop import loss_function


class DamagedRun(Exception):
    """A run dir file that cannot be read back into the run it came from."""


def _read(path: Path, what: str, load):
    """``load()``, or one line naming the file when it is missing or damaged. Any exception counts: a damaged
    file fails in many ways (YAML, pickle, zip, shapes, types), and nothing in it is executed."""
    try:
        return load()
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 (see docstring)
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DamagedRun(f"{path.name}: expected {what}, got {type(err).__name__}: {detail[:200]}") from None


def load_run(run_dir: Path, device: str):
    """Rebuild a finished run. Its config.yaml is read as data and checked by the schema, which builds
    only the registered settings classes (a ``_target_`` naming anything else is refused), and the
    weights are read with ``weights_only=True``: nothing in a run dir can run code here."""
    config = run_dir / "config.yaml"
    plain = _read(config, "the run's resolved config (a YAML mapping)",
                  lambda: OmegaConf.to_container(OmegaConf.load(config), resolve=False))
    if not isinstance(plain, dict):
        raise DamagedRun(f"config.yaml: expected a YAML mapping, got {type(plain).__name__}")
    plain["device"] = device
    settings = settings_from_plain(plain)
    dev = settings.device
    data = build_data(settings)
    model = build_model(settings, data)
    _read(run_dir / "model.pt", "the model's weights (torch.save of its state_dict)",
          lambda: model.load_state_dict(torch.load(run_dir / "model.pt", map_location=dev, weights_only=True)))
    optimizer = build_optimizer_from_settings(settings, model)
    _read(run_dir / "optimizer.pt", "the optimizer's state (torch.save of its state_dict)",
          lambda: optimizer.load_state_dict(torch.load(run_dir / "optimizer.pt", map_location=dev,
                                                       weights_only=True)))
    return settings, data, model, optimizer


def plot_spectra(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for res in results:
        eig = res.eigenvalues.double().abs().clamp_min(1e-30).numpy()
        label = f"{res.space}: κ={'—' if res.kappa is None else f'{res.kappa:.3g}'} ({res.method})"
        ax.plot(range(len(eig)), sorted(eig), marker=".", linestyle="-", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("index (sorted)")
    ax.set_ylabel("|eigenvalue|")
    ax.set_title("spectrum of H (p) and PᵀHP (z) at the final step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--method", default="auto", choices=["auto", "lanczos", "dense"])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--bn-mode", default="train", choices=["train", "eval"])
    parser.add_argument("--max-matvecs", type=int, default=200)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    try:
        settings, data, model, optimizer = load_run(args.run_dir, args.device)
    except (ConfigError, DamagedRun, OSError) as err:
        raise SystemExit(f"error: {args.run_dir}: {err}") from None
    size = settings.loop.batch_size
    n = min(data.n_train, size * args.batches)
    batches = [(data.x_train[i:i + size], data.y_train[i:i + size]) for i in range(0, n, size)]
    # z needs P: a black-box optimizer exposes none, and BNP's block P is not exposed
    z = optimizer.preconditioner.exposes_P and settings.preconditioner.NAME != "bnp"
    if not z:
        print(f"κ in z is not measured: preconditioner {settings.preconditioner.name} exposes no P")
    results = [measure_curvature(model, loss_function(data.task), batches, optimizer=optimizer, space=space,
                                 method=args.method, bn_mode=args.bn_mode, max_matvecs=args.max_matvecs)
               for space in (("p", "z") if z else ("p",))]
    print(f"{args.run_dir}  ({results[0].n_params} parameters, {len(batches)} batches of {size}, "
          f"bn_mode={args.bn_mode})")
    print(f"{'space':6s} {'lam_max':>12s} {'lam_min':>12s} {'kappa':>12s} {'method':>8s} {'matvecs':>8s} "
          f"{'converged':>9s} {'seconds':>8s}")
    for r in results:
        kappa = "—" if r.kappa is None else f"{r.kappa:.4g}"
        print(f"{r.space:6s} {r.lam_max:12.4g} {r.lam_min:12.4g} {kappa:>12s} {r.method:>8s} {r.matvecs:8d} "
              f"{str(r.converged):>9s} {r.seconds:8.2f}" + (f"  ({r.flag})" if r.flag else ""))
    plot_spectra(results, args.run_dir / "curvature.png")
    print(f"wrote {args.run_dir / 'curvature.png'}")


if __name__ == "__main__":
    main()
