"""OpenPose-style landmark maps of user-marked mesh landmarks (StyleAvatar3D data generation conditions heads on
pose / facial-landmark maps; docs/methods/styleavatar3d.md): each marked 3D point is projected into the
view, kept if it is not hidden behind the surface (its view depth within `tolerance` of the rendered depth
at its pixel), and drawn as a filled dot in its own colour (hues spread evenly over the landmarks, as
OpenPose's palette) with the limbs between two visible landmarks drawn first as thinner lines of the mean
colour, on black.
"""
from __future__ import annotations

import colorsys

import torch
from torch import Tensor

from lift3d.data.cameras import ndc_to_pixel, project_points


def landmark_colours(n: int) -> Tensor:
    """[n,3] distinct saturated colours (hue k/n)."""
    return torch.tensor([colorsys.hsv_to_rgb(k / max(n, 1), 1.0, 1.0) for k in range(n)], dtype=torch.float32)


def project_landmarks(points: Tensor, mvp: Tensor, zbuf: Tensor, tolerance: float = 0.03) -> tuple[Tensor, Tensor]:
    """points [K,3], mvp [B,4,4], zbuf [B,1,H,W] (view-axis depth of the surface, 0 on background) ->
    (pixel (column, row) [B,K,2] at zbuf's resolution, visible [B,K] bool)."""
    b, _, h, w = zbuf.shape
    ndc, depth = project_points(points[None].expand(b, -1, -1), mvp)  # [B,K,3], [B,K]
    pix = ndc_to_pixel(ndc[..., :2], h, w)  # [B,K,2] (column, row), integers = pixel centres
    col, row = pix[..., 0].round().long(), pix[..., 1].round().long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (depth > 0)
    surface = zbuf[torch.arange(b)[:, None], 0, row.clamp(0, h - 1), col.clamp(0, w - 1)]  # [B,K]
    unoccluded = (surface <= 0) | (depth <= surface * (1 + tolerance))
    return pix, inside & unoccluded


def _segment_distance(grid: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """grid [P,2], a / b [B,2] -> [B,P] distance of every grid point to segment ab."""
    ab = (b - a)[:, None]  # [B,1,2]
    t = (((grid[None] - a[:, None]) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-8)).clamp(0, 1)  # [B,P]
    return (grid[None] - (a[:, None] + t[..., None] * ab)).norm(dim=-1)


def draw_landmarks(mesh, mvp: Tensor, zbuf: Tensor, size: int, supersample: int = 1, radius: float | None = None
                   ) -> Tensor:
    """[B,3,size,size] in [0,1]: the landmark map of `mesh.landmarks` / `mesh.limbs` (zbuf [B,1,S·s,S·s])."""
    names = list(mesh.landmarks)
    points = torch.stack([mesh.landmarks[n] for n in names])  # [K,3]
    pix_hi, visible = project_landmarks(points, mvp, zbuf)
    pix = (pix_hi + 0.5) / supersample - 0.5  # (column, row) at the output resolution
    b = pix.shape[0]
    r = max(1.0, size / 32.0) if radius is None else radius
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    grid = torch.stack([cols.reshape(-1), rows.reshape(-1)], -1)  # [P,2] (column, row)
    colours = landmark_colours(len(names))
    canvas = torch.zeros(b, size * size, 3)
    for a_name, b_name in mesh.limbs:
        i, j = names.index(a_name), names.index(b_name)
        on = (_segment_distance(grid, pix[:, i], pix[:, j]) <= 0.6 * r) & (visible[:, i] & visible[:, j])[:, None]
        canvas = torch.where(on[..., None], (colours[i] + colours[j]) / 2, canvas)
    for k in range(len(names)):
        on = ((grid[None] - pix[:, k, None]).norm(dim=-1) <= r) & visible[:, k, None]  # [B,P]
        canvas = torch.where(on[..., None], colours[k], canvas)
    return canvas.reshape(b, size, size, 3).permute(0, 3, 1, 2).contiguous()
