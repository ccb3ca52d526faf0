"""Shared helpers for end-to-end tests that drive launch.py in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_launch(args: list[str], timeout: int = 1800, check: bool = True) -> subprocess.CompletedProcess:
    # timeout: a generous net for a hung process on a loaded machine (#21), never a speed requirement
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"launch.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def only_trial(root: Path, name: str) -> Path:
    trials = sorted((root / name).iterdir())
    assert len(trials) == 1, trials
    return trials[0]
