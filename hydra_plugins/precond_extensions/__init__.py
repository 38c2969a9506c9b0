"""Config groups of installed precond extensions on Hydra's search path (docs/extending.md)."""
