"""Scores a toy-world result against the true shape: silhouette IoU over the turntable views and
the object's colour.

Input: the RGBA turntable a test pass writes with `system.save_rgba_dataset=true`
(`<trial>/save/it{N}-test-rgba/transforms.json` + straight-alpha PNGs, lift3d/utils/rgba_dataset.py).
The true shape is rendered at the same cameras (render.py), so the two line up pixel for pixel.

- IoU: mask IoU of alpha > 0.5 against the true coverage > 0.5, averaged over the views.
- Colour: mean straight colour of the predicted silhouette; it is "right" when the nearest of the
  palette's colours — each measured the same way on true renders of the shape in that colour, so
  shading is accounted for — is the prompt's colour. The colour error is the RGB distance to the
  true render's mean colour.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tools.toyworld.render import render_shape
from tools.toyworld.shapes import COLOURS
from lift3d.utils.metrics import mask_iou
from lift3d.utils.rgba_dataset import test_pass_datasets


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
    folders = test_pass_datasets(Path(trial))
    if not folders:
        raise FileNotFoundError(
            f"no save/it*-test-rgba/transforms.json under {trial}: run the test pass with system.save_rgba_dataset=true"
        )
    return folders[-1]


def read_rgba_dataset(folder: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(images [N,H,W,4] in [0,1], cameras {elevation, azimuth, distance, fovy_deg: [N]}) of a
    transforms.json dataset, read by multiview-images-datamodule's reader; the cameras are the
    look-at-origin angles of each c2w position and the vertical fov of its focal length."""
    from types import SimpleNamespace

    from lift3d.data.multiview_images import load_views, read_transforms

    views = load_views(read_transforms(str(folder), key="dataset"), SimpleNamespace(img_wh=None, downscale=1.0))
    position = views["c2w"][:, :3, 3]  # [N,3]
    distance = position.norm(dim=-1)
    cams = {
        "elevation": torch.rad2deg(torch.asin(position[:, 2] / distance)),
        "azimuth": torch.rad2deg(torch.atan2(position[:, 1], position[:, 0])),
        "distance": distance,
        "fovy_deg": torch.rad2deg(2.0 * torch.atan(0.5 * views["height"] / views["focal"][:, 1])),
    }
    return torch.cat([views["rgb"], views["mask"]], -1), cams


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
