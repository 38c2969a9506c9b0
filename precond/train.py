"""``python -m precond.train`` and ``from precond.train import run``: the training entry point,
which lives in :mod:`precond.run.entry`; this address is kept so that scripts written against it
still work."""
from precond.run.entry import CONF_DIR, hydra_main, main, run

__all__ = ["CONF_DIR", "hydra_main", "main", "run"]

if __name__ == "__main__":
    main()
