"""The one exception type for bad user input.

Every message names the config key, what was expected, what arrived and how
to fix it, so it can be shown to the user as a single line.
"""


class ConfigError(ValueError):
    """Invalid configuration value: ``ConfigError(key, expected, got, fix)``."""

    def __init__(self, key: str, expected: str, got: object = None, fix: str = ""):
        self.key = key
        msg = f"{key}: expected {expected}"
        if got is not None:
            msg += f", got {got!r}"
        if fix:
            msg += f" — {fix}"
        super().__init__(msg)
