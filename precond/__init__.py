"""precond: adaptive optimizers as preconditioners.

Public API::

    from precond import build_optimizer
"""
from precond.threads import quiet_waiting

quiet_waiting()  # before torch loads: OpenMP reads its waiting policy once

from precond.optim import ComposedOptimizer, build_optimizer  # noqa: E402

__all__ = ["build_optimizer", "ComposedOptimizer"]
__version__ = "0.1.0"
