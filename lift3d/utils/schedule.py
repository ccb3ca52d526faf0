"""`C()`: values that change with the training step (threestudio's schedule forms).

Forms accepted (docs/DESIGN.md, "Core contracts"):
- `v`                                 constant;
- `[v0, v1, end]`                     linear from v0 at step 0 to v1 at `end`;
- `[start, v0, v1, end]`              v0 until `start`, linear to v1 at `end`, v1 after;
- `[s0, v0, v1, s1, v2, s2, ...]`     piecewise linear through (s0,v0), (s1,v1), (s2,v2), ...
The step counter is the global step when the (last) knot is an int and the epoch when a float.
"""
from __future__ import annotations

from typing import Any, Sequence

from omegaconf import ListConfig


def _knots(value: Sequence[Any]) -> list[tuple[float, float]]:
    value = list(value)
    if len(value) == 3:
        value = [0] + value
    if len(value) < 4 or len(value) % 2 != 0:
        raise ValueError(
            f"schedule {value} has {len(value)} entries; use v, [v0, v1, end], "
            f"[start, v0, v1, end] or [s0, v0, v1, s1, v2, s2, ...]."
        )
    knots = [(value[0], value[1]), (value[3], value[2])]
    for i in range(4, len(value), 2):
        knots.append((value[i + 1], value[i]))
    return knots


def C(value: Any, epoch: int, global_step: int) -> float:
    """Evaluate a scheduled config value at (epoch, global_step)."""
    if isinstance(value, (int, float)) or value is None:
        return value
    if not isinstance(value, (list, tuple, ListConfig)):
        raise TypeError(f"cannot schedule {value!r}: expected a number or a list")
    knots = _knots(value)
    current = epoch if isinstance(knots[-1][0], float) else global_step
    if current <= knots[0][0]:
        return knots[0][1]
    for (s0, v0), (s1, v1) in zip(knots[:-1], knots[1:]):
        if current < s1:
            frac = (current - s0) / max(s1 - s0, 1e-12)
            return v0 + (v1 - v0) * frac
    return knots[-1][1]
