"""precond: adaptive optimizers as preconditioners.

Public API::

    from precond import build_optimizer

The package imports torch only when an attribute needs it (``precond.build_optimizer``), so that
the command-line entry point can set OpenMP's waiting policy before torch loads
(:mod:`precond.threads`); importing precond as a library changes no process-wide setting.
"""

__all__ = ["build_optimizer", "ComposedOptimizer"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from precond import optim

        return getattr(optim, name)
    raise AttributeError(f"module 'precond' has no attribute {name!r}")
