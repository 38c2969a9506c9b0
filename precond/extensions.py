"""Options that installed packages add to precond, found through Python entry points (docs/extending.md).

A package declares, in its ``pyproject.toml``::

    [project.entry-points."precond.preconditioners"]
    adamax = "my_package.adamax"            # a module: its PreconditionerSettings subclasses become options
    [project.entry-points."precond.models"]
    tiny = "my_package.models"              # ModelSpec subclasses
    [project.entry-points."precond.datasets"]
    blobs = "my_package.data"               # DataSpec subclasses
    [project.entry-points."precond.optimizers"]
    MyOpt = "my_package.opt:MyOptimizer"    # a torch.optim.Optimizer subclass for preconditioner=torch_optim
    [project.entry-points."precond.configs"]
    my_package = "my_package.conf"          # a package holding config groups (preconditioner/adamax.yaml, ...)

Loading an entry point imports its module; the settings classes it defines subclass precond's bases, and
those subclasses are exactly what a config's ``_target_`` may name (:func:`precond.run.config.build_group`).
So registration happens when the package is installed, never from a run dir or a config value, and what a
config may name stays a closed set that the error for an unknown name lists. This module imports nothing
heavy: the Hydra search-path plugin reads it before torch loads.
"""
from __future__ import annotations

import functools
from importlib import import_module
from importlib.metadata import entry_points

from precond.errors import ConfigError

#: the entry-point groups whose modules are imported before a config is checked
MODULE_GROUPS = ("precond.preconditioners", "precond.models", "precond.datasets")
OPTIMIZERS = "precond.optimizers"
CONFIGS = "precond.configs"


def _entries(group: str) -> list:
    return sorted(entry_points(group=group), key=lambda ep: (ep.name, ep.value))


def _load(ep):
    try:
        return ep.load()
    except Exception as err:  # an installed extension that cannot be imported: one line that names it
        raise ConfigError(f"/entry point {ep.group}:{ep.name}", f"an importable {ep.value!r}", None,
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} — fix or "
                          f"uninstall the package that declares it") from None


@functools.cache
def load_extensions() -> tuple[str, ...]:
    """Import every registered module (once per process); returns their names."""
    loaded = []
    for group in MODULE_GROUPS:
        for ep in _entries(group):
            _load(ep)
            loaded.append(ep.value)
    return tuple(loaded)


@functools.cache
def registered_optimizers() -> dict[str, type]:
    """``{name: optimizer class}`` from the ``precond.optimizers`` entry points."""
    import torch

    out = {}
    for ep in _entries(OPTIMIZERS):
        cls = _load(ep)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ConfigError(f"/entry point {OPTIMIZERS}:{ep.name}", "a torch.optim.Optimizer subclass", ep.value,
                              "the package that declares it registers something else")
        out[ep.name] = cls
    return out


def config_dirs() -> list[str]:
    """The directories of the packages that ship config groups (what :func:`config_search_paths` puts on Hydra's
    search path), for the advice that reads config files itself."""
    from pathlib import Path

    config_search_paths()  # imports each package, or fails in one line naming its entry point
    return [str(Path(import_module(ep.value.split(":")[0]).__file__).parent) for ep in _entries(CONFIGS)]


def config_search_paths() -> list[str]:
    """Hydra search-path entries (``pkg://module``) of the packages that ship config groups."""
    out = []
    for ep in _entries(CONFIGS):
        module = ep.value.split(":")[0]
        try:
            import_module(module)
        except ImportError as err:
            raise ConfigError(f"/entry point {CONFIGS}:{ep.name}", f"an importable package {module!r}", None,
                              str(err)) from None
        out.append(f"pkg://{module}")
    return out
