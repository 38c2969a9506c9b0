"""precond: adaptive optimizers as preconditioners.

Public API::

    from precond import build_optimizer
"""
from precond.optim import ComposedOptimizer, build_optimizer

__all__ = ["build_optimizer", "ComposedOptimizer"]
__version__ = "0.1.0"
