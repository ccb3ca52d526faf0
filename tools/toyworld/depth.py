"""Ray-distance depth of toy-world shapes, the conditioning of the toy depth ControlNet (#17 point 4).

Depth here is what the tri-plane GAN renders (`image_depth` of lift3d.gan.triplane_generator): the
distance from the camera centre to the surface along each pixel's ray, with `far` where no surface
is hit (the GAN's `ray_end`), so a depth map of the toy world and one of the source GAN are the same
kind of image once turned into inverse depth (lift3d.gan.depth_generation.inverse_depth_image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tools.toyworld.render import camera_matrices, render_shape
from tools.toyworld.shapes import shape_mesh

FAR = 2.9  # the toy source GAN's ray_end (configs/gan/toy-triplane.yaml)


@torch.no_grad()
def render_shape_depth(shape: str, elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor,
                       fovy_deg: torch.Tensor, size: int, supersample: int = 2, far: float = FAR) -> torch.Tensor:
    """depth [B,1,size,size]: ray distance to the surface, `far` on the background (box-filtered from
    `supersample`× the size, so edges blend towards `far` as a volume renderer's expected depth does)."""
    from lift3d.ops.rasterize import render_mesh_attributes

    v, f, _n = shape_mesh(shape)
    c2w, mvp = camera_matrices(elevation, azimuth, distance, fovy_deg)
    hi = size * supersample
    out = render_mesh_attributes(v, f, mvp, hi, hi, attrs={"position": v})
    covered = (out["face_id"] >= 0).float()  # [B,hi,hi,1]
    ray = (out["position"] - c2w[:, None, None, :3, 3]).norm(dim=-1, keepdim=True)  # [B,hi,hi,1]
    depth = ray * covered + far * (1.0 - covered)
    return F.avg_pool2d(depth.permute(0, 3, 1, 2), supersample).contiguous()


def render_shape_with_depth(shape: str, colour: str, elevation, azimuth, distance, fovy_deg, size: int):
    """(rgb [B,S,S,3] on white, mask [B,S,S,1], depth [B,1,S,S]) of one toy object."""
    rgb, mask = render_shape(shape, colour, elevation, azimuth, distance, fovy_deg, size)
    return rgb, mask, render_shape_depth(shape, elevation, azimuth, distance, fovy_deg, size)
