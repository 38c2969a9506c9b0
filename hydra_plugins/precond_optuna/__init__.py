"""``hydra/sweeper=optuna`` with precond's handling of trials that diverge or fail (see guarded_optuna)."""
