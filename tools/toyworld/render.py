"""Shaded renders and masks of toy-world shapes at lift3d cameras.

Cameras follow docs/methods/threestudio-conventions.md (elevation/azimuth in degrees, z up,
azimuth 0 on +x, OpenGL c2w looking at the origin, vertical fovy) through lift3d.data.cameras,
so a render here and a NeRF render of the same camera line up pixel for pixel.
Shading: albedo × (ambient + diffuse · max(0, n·l)) with a "headlight" l = camera direction
tilted upwards, so an object looks alike from every azimuth (a multi-view-consistent prior).
Antialiasing: rendered at `supersample`× the size and box-filtered down.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lift3d.data.cameras import get_mvp_matrix, get_projection_matrix, look_at_c2w, spherical_to_cartesian
from tools.toyworld.shapes import COLOURS, shape_mesh

AMBIENT, DIFFUSE = 0.45, 0.55


def camera_matrices(elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor, fovy_deg: torch.Tensor):
    """(c2w [B,4,4], mvp [B,4,4]) of cameras looking at the origin; all inputs [B] (degrees)."""
    c2w = look_at_c2w(spherical_to_cartesian(elevation, azimuth, distance))
    proj = get_projection_matrix(torch.deg2rad(fovy_deg), 1.0, 0.01, 100.0)
    return c2w, get_mvp_matrix(c2w, proj)


@torch.no_grad()
def render_shape(
    shape: str, colour: str, elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor,
    fovy_deg: torch.Tensor, size: int, supersample: int = 2, background: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb [B,size,size,3] composited on `background`, mask [B,size,size,1]) in [0, 1]."""
    from lift3d.ops.rasterize import render_mesh_attributes

    v, f, n = shape_mesh(shape)
    c2w, mvp = camera_matrices(elevation, azimuth, distance, fovy_deg)
    hi = size * supersample
    out = render_mesh_attributes(v, f, mvp, hi, hi, attrs={"normal": n})
    normal = F.normalize(out["normal"], dim=-1)  # [B,hi,hi,3] (0 on background -> stays 0)
    light = F.normalize(c2w[:, :3, 2] + torch.tensor([0.0, 0.0, 0.6]), dim=-1)  # towards the camera, tilted up
    shade = AMBIENT + DIFFUSE * (normal * light[:, None, None, :]).sum(-1, keepdim=True).clamp(min=0.0)
    albedo = torch.tensor(COLOURS[colour])
    covered = (out["face_id"] >= 0).float()
    rgb = (albedo * shade).clamp(0, 1) * covered + background * (1.0 - covered)
    # box filter: [B,hi,hi,C] -> [B,size,size,C]
    rgb = F.avg_pool2d(rgb.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
    mask = F.avg_pool2d(covered.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
    return rgb.contiguous(), mask.contiguous()


def render_shape_rgba(shape: str, colour: str, elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor,
                      fovy_deg: torch.Tensor, size: int, supersample: int = 2) -> torch.Tensor:
    """Straight-alpha RGBA [B,size,size,4] (colour un-premultiplied at the antialiased edges, 0 where
    nothing is covered), the format of reference images and RGBA datasets."""
    rgb, mask = render_shape(shape, colour, elevation, azimuth, distance, fovy_deg, size, supersample, background=0.0)
    straight = torch.where(mask > 1e-4, rgb / mask.clamp(min=1e-4), torch.zeros_like(rgb)).clamp(0, 1)
    return torch.cat([straight, mask], -1)
