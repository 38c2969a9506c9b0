"""Adamax as a precond preconditioner: an example of the extension route (docs/extending.md)."""
