"""Scores a toy-world result against the true shape: silhouette IoU over the turntable views and
the object's colour.

Input: the RGBA turntable a test pass writes with `system.save_rgba_dataset=true`
(`<trial>/save/it{N}-test-rgba/transforms.json` + straight-alpha PNGs, lift3d/utils/rgba_dataset.py),
whose frames carry each camera's elevation, azimuth, distance and fovy. The true shape is rendered
at the same cameras (render.py), so the two line up pixel for pixel.

- IoU: mask IoU of alpha > 0.5 against the true coverage > 0.5, averaged over the views.
- Colour: mean straight colour of the predicted silhouette; it is "right" when the nearest of the
  palette's colours — each measured the same way on true renders of the shape in that colour, so
  shading is accounted for — is the prompt's colour. The colour error is the RGB distance to the
  true render's mean colour.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lift3d.toyworld.render import render_shape
from lift3d.toyworld.shapes import COLOURS
from lift3d.utils.metrics import mask_iou


@dataclass
class ToyScore:
    iou: float  # mean silhouette IoU over the views
    colour_error: float  # |mean predicted colour - mean true colour| (RGB, [0, sqrt 3])
    predicted_colour: str  # nearest palette colour
    right_colour: bool

    def passed(self, iou_threshold: float = 0.7) -> bool:
        return self.iou >= iou_threshold and self.right_colour


def find_test_dataset(trial: str | Path) -> Path:
    """The newest `save/it*-test-rgba` folder of a trial; FileNotFoundError naming the fix if none."""
    folders = sorted(Path(trial).glob("save/it*-test-rgba/transforms.json"), key=lambda p: p.stat().st_mtime)
    if not folders:
        raise FileNotFoundError(
            f"no save/it*-test-rgba/transforms.json under {trial}: run the test pass with system.save_rgba_dataset=true"
        )
    return folders[-1].parent


def read_rgba_dataset(folder: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(images [N,H,W,4] in [0,1], cameras {elevation, azimuth, distance, fovy_deg: [N]}); intrinsics
    per frame or shared at the top level, as RGBADatasetWriter writes them."""
    import numpy as np
    from PIL import Image

    meta = json.loads((folder / "transforms.json").read_text())
    frames = meta["frames"]
    images = torch.stack([torch.from_numpy(np.array(Image.open(folder / f["file_path"]).convert("RGBA"))).float() / 255.0 for f in frames])
    cams = {
        "elevation": torch.tensor([f["elevation_deg"] for f in frames]),
        "azimuth": torch.tensor([f["azimuth_deg"] for f in frames]),
        "distance": torch.tensor([f["camera_distance"] for f in frames]),
        "fovy_deg": torch.tensor([math.degrees(f.get("camera_angle_y", meta.get("camera_angle_y"))) for f in frames]),
    }
    return images, cams


def _mean_colour(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean colour [3] of rgb [N,H,W,3] over mask [N,H,W,1] > 0.5 (grey if empty)."""
    m = (mask > 0.5).float()
    if m.sum() == 0:
        return torch.full((3,), 0.5)
    return (rgb * m).sum((0, 1, 2)) / m.sum()


@torch.no_grad()
def score_views(images: torch.Tensor, cams: dict[str, torch.Tensor], shape: str, colour: str) -> ToyScore:
    """Score RGBA views [N,H,W,4] (straight alpha) at cameras `cams` against the true (shape, colour)."""
    size = images.shape[1]
    rgb, alpha = images[..., :3], images[..., 3:]
    args = (cams["elevation"], cams["azimuth"], cams["distance"], cams["fovy_deg"], size)
    true_rgb, true_mask = render_shape(shape, colour, *args, supersample=4)
    iou = float(mask_iou(alpha, true_mask).mean())
    predicted = _mean_colour(rgb, alpha)
    # the palette as the true shape shows it (shading included), then the nearest entry
    palette = {name: _mean_colour(render_shape(shape, name, *args, supersample=1)[0], true_mask) for name in COLOURS}
    nearest = min(palette, key=lambda name: float((palette[name] - predicted).norm()))
    return ToyScore(
        iou=iou, colour_error=float((predicted - _mean_colour(true_rgb, true_mask)).norm()),
        predicted_colour=nearest, right_colour=nearest == colour,
    )


def score_trial(trial: str | Path, shape: str, colour: str) -> ToyScore:
    """Score a finished trial's test-pass RGBA turntable against the true (shape, colour)."""
    return score_views(*read_rgba_dataset(find_test_dataset(trial)), shape, colour)
