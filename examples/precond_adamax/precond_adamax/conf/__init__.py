"""Config groups of precond-adamax (found by precond through the ``precond.configs`` entry point)."""
