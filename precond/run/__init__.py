"""One run: the entry point (Hydra glue), the config → settings step, the training loop, the run's
files, checkpoints, interrupts and monitors. Built on the maths in :mod:`precond`; knows nothing
of sweeps except that a multirun ends with a report."""
