"""Exceptions users see. Each message says what is wrong and how to fix it."""
import difflib
from typing import Iterable


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """' Did you mean: a, b?' for the choices closest to `word`, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=cutoff)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class Lift3DError(Exception):
    """Base class of lift3d's user-facing errors."""


class ConfigError(Lift3DError, ValueError):
    """A config is invalid: unknown key, bad value, bad override syntax, impossible stage chain."""


class RegistryError(Lift3DError, KeyError):
    """An unknown or duplicate registered name."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class SurfaceError(Lift3DError, ValueError):
    """No surface can be extracted (e.g. the field never crosses the isosurface threshold)."""


class RunFault(Lift3DError):
    """A run stopped by a fault during training (a non-finite loss, gradient or parameter, a full
    disk); the last good checkpoint is kept. launch.py exits with code 3."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM outside a training step (or a second signal): stop now. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` swallows it. `signum`: the signal received."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
