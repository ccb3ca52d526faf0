"""A synthetic posed-photo scene in nerfstudio's transforms.json format, for tests and the config table
(multiview-camera-datamodule: InstructNeRF2NeRF, Control4D).

`write_multiview_scene(folder, n_views, size)`: n_views RGB PNGs of one constant colour each
(`view_colour(i)`, so resized pixels keep their value), cameras on a ring of radius 2 at height 0.3
looking at the origin, the rig moved off the origin by `RIG_OFFSET` (so camera_layout matters), OpenGL
camera-to-world `transform_matrix`, per-frame OPENCV intrinsics (fl_x = fl_y = FOCAL, centred principal
point, w, h).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image

FOCAL = 40.0  # pixels, for the 32² default
RIG_OFFSET = (0.5, -0.25, 1.0)


def view_colour(i: int) -> tuple[int, int, int]:
    """The colour (uint8 RGB) of view i's image."""
    return (20 * i % 256, (255 - 20 * i) % 256, 100)


def write_multiview_scene(folder: Path, n_views: int = 6, size: int = 32) -> Path:
    """Write the scene (module docstring) into `folder`; returns it."""
    from lift3d.data.cameras import look_at_c2w

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    angles = torch.arange(n_views) * (2 * math.pi / n_views)
    positions = torch.stack([2 * angles.cos(), 2 * angles.sin(), 0.3 * torch.ones(n_views)], -1)
    c2w = look_at_c2w(positions)
    c2w[:, :3, 3] += torch.tensor(RIG_OFFSET)
    focal = FOCAL * size / 32
    frames = []
    for i in range(n_views):
        Image.new("RGB", (size, size), view_colour(i)).save(folder / "images" / f"frame_{i:05d}.png")
        frames.append({"file_path": f"images/frame_{i:05d}.png", "transform_matrix": c2w[i].tolist(),
                       "fl_x": focal, "fl_y": focal, "cx": size / 2, "cy": size / 2, "w": size, "h": size})
    (folder / "transforms.json").write_text(json.dumps({"camera_model": "OPENCV", "frames": frames}))
    return folder


__all__ = ["FOCAL", "RIG_OFFSET", "view_colour", "write_multiview_scene"]
