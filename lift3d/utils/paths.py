"""Resolving user-given file paths: as given (relative to the working directory), else relative
to the repository root, so that `load/...` paths in shipped configs work from any directory;
and trial folder names that are safe, bounded and unique for any tag (`safe_tag`, `reserve_trial_dir`)."""
from __future__ import annotations

import hashlib
import re
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


# ---------------------------------------------------------------- trial folders
TAG_MAX_BYTES = 96  # the tag part of a trial folder name (UTF-8 bytes); file systems allow 255
_UNSAFE = re.compile(r"[^\w.,+=@-]+")  # \w: letters and digits of any script, and _


def safe_tag(tag: str, max_bytes: int = TAG_MAX_BYTES) -> str:
    """A readable folder-name version of `tag` (usually the prompt): runs of characters other than
    letters, digits and . , + = @ - become one '_'; no leading dot; at most `max_bytes` UTF-8 bytes.
    A cut tag ends in '~' and 8 hex digits of the full tag's sha256, so long prompts that share
    their beginning still get different names."""
    clean = _UNSAFE.sub("_", str(tag)).strip("_.") or "run"
    if len(clean.encode()) <= max_bytes:
        return clean
    digest = hashlib.sha256(str(tag).encode()).hexdigest()[:8]
    room = max_bytes - 9
    cut = clean.encode()[:room].decode("utf-8", errors="ignore").rstrip("_.")
    return f"{cut}~{digest}"


def reserve_trial_dir(exp_dir: str | Path, trial_name: str) -> Path:
    """Create and return a new trial folder `<exp_dir>/<trial_name>`, or `<trial_name>-2`, `-3`, ...
    when it exists: mkdir is atomic, so two runs started in the same second get two folders."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10000):
        path = exp_dir / (trial_name if n == 1 else f"{trial_name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"exp_root_dir: {exp_dir} already holds 9999 trials named {trial_name}*; set another tag.")
