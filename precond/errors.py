"""The one exception type for bad user input.

Every message names the config key, what was expected, what arrived and how
to fix it, so it can be shown to the user as a single line.

Library objects raise with the key *relative to their own config node*
(``ConfigError("variable", ...)`` in the regularization settings); the entry
point adds the node's name with :meth:`ConfigError.within` (→
``regularization.variable``). A key about another node starts with ``/``
(``ConfigError("/normalization", ...)`` raised by a model factory) and is kept as is.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """Invalid configuration value: ``ConfigError(key, expected, got, fix)``."""

    def __init__(self, key: str, expected: str, got: object = None, fix: str = ""):
        self.key, self.expected, self.got, self.fix = key, expected, got, fix
        msg = f"{key.lstrip('/')}: expected {expected}"
        if got is not None:
            msg += f", got {got!r}"
        if fix:
            msg += f" — {fix}"
        super().__init__(msg)

    def within(self, node: str) -> ConfigError:
        """The same error with its key placed under config node ``node`` (absolute keys unchanged)."""
        key = self.key[1:] if self.key.startswith("/") else f"{node}.{self.key}"
        return ConfigError(key, self.expected, self.got, self.fix)
