"""Progress of a batch: one line per job state change and an overall bar.

    [batch 00:00:12] red_cube: running (attempt 1, GPUs '0', host node-a)
    [batch 00:01:40] red_cube: done in 88 s (peak RSS 1450 MB)
    [batch 00:01:40] [#########-----------]  9/20 done, 2 running, 1 failed, 8 left, ETA 6m40s
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(done_walls: list[float], running: int, left: int, slots: int) -> Optional[float]:
    """Jobs still to run (running ones count half done) × mean job wall time / jobs at once."""
    if not done_walls or (running + left) == 0:
        return None if running + left else 0.0
    mean = sum(done_walls) / len(done_walls)
    return (left + 0.5 * running) * mean / max(1, slots)


def bar(done: int, running: int, failed: int, left: int, eta: Optional[float], width: int = 20) -> str:
    total = max(1, done + running + failed + left)
    n_done = round(width * done / total)
    n_fail = round(width * failed / total)
    n_run = round(width * running / total)
    cells = "#" * n_done + "x" * n_fail + ">" * n_run
    cells = (cells + "-" * width)[:width]
    return (f"[{cells}] {done}/{total} done, {running} running, {failed} failed, {left} left, "
            f"ETA {format_duration(eta) if eta is not None else '?'}")


class Progress:
    def __init__(self, total: int, stream: TextIO = None, every_s: float = 30.0):
        self.stream = stream or sys.stdout
        self.start = time.time()
        self.total = total
        self.every_s = every_s
        self.last_bar = 0.0

    def line(self, text: str) -> None:
        stamp = format_clock(time.time() - self.start)
        print(f"[batch {stamp}] {text}", file=self.stream, flush=True)

    def overall(self, done: int, running: int, failed: int, left: int, walls: list[float], slots: int,
                force: bool = True) -> None:
        """The bar: on every state change (force), else at most every `every_s` seconds."""
        if not force and time.time() - self.last_bar < self.every_s:
            return
        self.last_bar = time.time()
        self.line(bar(done, running, failed, left, eta_seconds(walls, running, left, slots)))


def format_clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
