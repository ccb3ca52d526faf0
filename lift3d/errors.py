"""Exceptions users see. Each message says what is wrong and how to fix it."""


class Lift3DError(Exception):
    """Base class of lift3d's user-facing errors."""


class ConfigError(Lift3DError, ValueError):
    """A config is invalid: unknown key, bad value, bad override syntax, impossible stage chain."""


class RegistryError(Lift3DError, KeyError):
    """An unknown or duplicate registered name."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""
