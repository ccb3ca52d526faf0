"""Resolving user-given file paths: as given (relative to the working directory), else relative
to the repository root, so that `load/...` paths in shipped configs work from any directory."""
from __future__ import annotations

from pathlib import Path

from lift3d.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_file(path: str, key: str, what: str = "file") -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_absolute() and (REPO_ROOT / p).is_file():
        return REPO_ROOT / p
    raise ConfigError(f"{key}: {what} '{path}' does not exist (looked in {Path.cwd()} and {REPO_ROOT}).")
