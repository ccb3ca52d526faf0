"""Checks of config values that name the key, the value and the fix (docs/DESIGN.md, "Core
contracts"): every message reads `<key> <problem>: <fix>`, e.g.
"data.fovy_range = [40, 200] leaves [-inf, 179]: give [low, high], e.g. [40, 70] inside [-inf, 179]".
Components' `validate_config` use them; C()-schedules have `lift3d.utils.schedule.check_schedule_range`.
"""
from __future__ import annotations

import math
from typing import Any, List, NoReturn, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from lift3d.errors import ConfigError


def fail(key: str, problem: str, fix: str) -> NoReturn:
    """Raise ConfigError "<key> <problem>: <fix>"."""
    raise ConfigError(f"{key} {problem}: {fix}")


def as_list(value: Any) -> Optional[list]:
    """`value` as a Python list when it is a list/tuple (plain or OmegaConf), else None."""
    if isinstance(value, (str, bytes, dict, DictConfig)) or not hasattr(value, "__len__"):
        return None
    return list(value)


def show(value: Any) -> str:
    """A config value as users wrote it (OmegaConf containers as plain lists/dicts)."""
    if isinstance(value, DictConfig):
        return str(OmegaConf.to_container(value))
    items = as_list(value)
    return str(value) if items is None else str(items)


def positive_int_list(value: Any, key: str, fix: str) -> List[int]:
    """`value` as a non-empty list of positive ints (an int becomes a one-element list)."""
    items = as_list(value)
    items = [value] if items is None else items
    if not items:
        fail(key, "is an empty list", fix)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            fail(key, f"= {show(value)} is invalid", fix)
    return [int(v) for v in items]


def check_range(
    cfg: Any, name: str, path: str, lo: Optional[float] = None, hi: Optional[float] = None,
    positive: bool = False, example: str = "",
) -> Tuple[float, float]:
    """Check that cfg.<name> is an ordered pair [low, high] within [lo, hi] (or > 0)."""
    key = f"{path}.{name}"
    value = cfg[name]
    items = as_list(value)
    hint = f"give [low, high]{', e.g. ' + example if example else ''}"
    if items is None or len(items) != 2:
        fail(key, f"= {show(value)} is not a pair", hint)
    low, high = float(items[0]), float(items[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        fail(key, f"= {show(value)} is not ordered (low > high) or not finite", hint + " with low <= high")
    if positive and low <= 0:
        fail(key, f"= {show(value)} must be > 0", hint + " with 0 < low <= high")
    if lo is not None and low < lo or hi is not None and high > hi:
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        fail(key, f"= {show(value)} leaves {bounds}", hint + f" inside {bounds}")
    return low, high


def check_scalar(
    cfg: Any, name: str, path: str, lo: Optional[float] = None, hi: Optional[float] = None,
    lo_open: bool = False, hi_open: bool = False,
) -> float:
    """Check that cfg.<name> is a finite number in the interval (open/closed as given)."""
    key = f"{path}.{name}"
    value = float(cfg[name])
    bad = not math.isfinite(value)
    bad |= lo is not None and (value <= lo if lo_open else value < lo)
    bad |= hi is not None and (value >= hi if hi_open else value > hi)
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        fail(key, f"= {cfg[name]} is out of range", f"use a value in {interval}")
    return value
