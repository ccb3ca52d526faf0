"""View-dependent prompting: which of side / front / back / overhead a camera sees (DreamFusion §3.2).

Directions are tested in the order side, front, back, overhead; the LAST one whose condition holds
wins (side always holds, so it is the default; overhead wins over front/back):

    front     |azimuth| < front_threshold                   (azimuth shifted to [-180, 180))
    back      |azimuth| > 180 - back_threshold
    overhead  elevation > overhead_threshold

Azimuth 0 is the +x axis (lift3d's camera convention), where the object's front is assumed to face.
The prompt of a direction is "<prompt>, <name> view" (suffix style) or "<name> view of <prompt>"
(prefix style, threestudio's `view_dependent_prompt_front: true`), unless overridden.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

DIRECTION_NAMES = ("side", "front", "back", "overhead")


@dataclass(frozen=True)
class ViewDirection:
    name: str
    # condition(elevation_deg [B], azimuth_deg [B] in [-180, 180), camera_distance [B]) -> bool [B]
    condition: Callable[[Tensor, Tensor, Tensor], Tensor]


def shift_azimuth_deg(azimuth: Tensor) -> Tensor:
    """Azimuth in degrees wrapped to [-180, 180)."""
    return (azimuth + 180.0) % 360.0 - 180.0


def make_directions(front_threshold: float = 45.0, back_threshold: float = 45.0, overhead_threshold: float = 60.0) -> list[ViewDirection]:
    return [
        ViewDirection("side", lambda ele, azi, dis: torch.ones_like(ele, dtype=torch.bool)),
        ViewDirection("front", lambda ele, azi, dis: azi.abs() < front_threshold),
        ViewDirection("back", lambda ele, azi, dis: azi.abs() > 180.0 - back_threshold),
        ViewDirection("overhead", lambda ele, azi, dis: ele > overhead_threshold),
    ]


def direction_indices(
    directions: Sequence[ViewDirection], elevation: Tensor, azimuth: Tensor, camera_distances: Optional[Tensor] = None
) -> Tensor:
    """Index into `directions` of each camera [B] (long): the last direction whose condition holds."""
    elevation = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1)
    azimuth = shift_azimuth_deg(torch.as_tensor(azimuth, dtype=torch.float32, device=elevation.device).reshape(-1))
    if camera_distances is None:
        camera_distances = torch.ones_like(elevation)
    camera_distances = torch.as_tensor(camera_distances, dtype=torch.float32, device=elevation.device).reshape(-1)
    idx = torch.zeros_like(elevation, dtype=torch.long)
    for i, direction in enumerate(directions):
        idx = torch.where(direction.condition(elevation, azimuth, camera_distances), torch.full_like(idx, i), idx)
    return idx


def view_prompt(prompt: str, direction: str, prefix_style: bool = False) -> str:
    """'<prompt>, <direction> view' or, prefix style, '<direction> view of <prompt>'."""
    return f"{direction} view of {prompt}" if prefix_style else f"{prompt}, {direction} view"


__all__ = ["DIRECTION_NAMES", "ViewDirection", "direction_indices", "make_directions", "shift_azimuth_deg", "view_prompt"]
