"""`C()`: values that change with the training step (threestudio's schedule forms).

Forms accepted (docs/DESIGN.md, "Core contracts"):
- `v`                                 constant;
- `[v0, v1, end]`                     linear from v0 at step 0 to v1 at `end`;
- `[start, v0, v1, end]`              v0 until `start`, linear to v1 at `end`, v1 after;
- `[s0, v0, v1, s1, v2, s2, ...]`     piecewise linear through (s0,v0), (s1,v1), (s2,v2), ...
The step counter is the global step when the (last) knot is an int and the epoch when a float.
`check_schedule_range` validates such a value before training (parseable, within bounds at every step).
"""
from __future__ import annotations

from typing import Any, Sequence

from omegaconf import ListConfig

from lift3d.errors import ConfigError


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


def _bound(x: float) -> str:
    return f"{x:g}"


def check_schedule_range(value: Any, key: str, low: float = 0.0, high: float = 1.0, hint: str = "") -> None:
    """ConfigError unless `value` (config key `key`) is a C()-schedule — a number or a
    [start_step, start, end, end_step]-style list — whose value lies in [low, high] at every step.
    A schedule is piecewise linear between its knots, so its knot values bound it. The message
    reads "<key> = <value> leaves [low, high]: <hint>"."""
    if value is None:
        raise ConfigError(f"{key} is null: give a number in [{_bound(low)}, {_bound(high)}] or a schedule "
                          f"[start_step, start, end, end_step].")
    try:
        C(value, 0, 0)
        values = [value] if not isinstance(value, (list, tuple, ListConfig)) else [v for _, v in _knots(value)]
        values = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if not all(low <= v <= high for v in values):
        shown = list(value) if isinstance(value, ListConfig) else value
        raise ConfigError(f"{key} = {shown} leaves [{_bound(low)}, {_bound(high)}]{': ' + hint if hint else '.'}")
