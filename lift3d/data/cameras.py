"""Camera maths shared by the data modules, renderers and rasterizers (pure functions, batched).

Conventions (docs/methods/threestudio-conventions.md, "Cameras and batches"):

* World: z-up, right-handed. A camera at elevation ``e``, azimuth ``a`` (degrees) and distance
  ``r`` sits at ``r * (cos e cos a, cos e sin a, sin e)``: azimuth 0 is the +x axis, azimuth 90
  the +y axis, elevation 90 the +z pole.
* Camera-to-world matrices ``c2w`` [B, 4, 4] follow OpenGL: in camera space +x is right, +y is
  up and the camera looks down -z. Columns 0, 1, 2 of ``c2w[:, :3, :3]`` are the camera's right,
  up and backward axes in world space; column 3 is the camera position.
* Pixels: row 0 is the top of the image, column 0 the left. Rays go through pixel centres
  ``(j + 0.5, i + 0.5)``; the default principal point is the image centre ``(W / 2, H / 2)``.
  Focal length in pixels: ``f = 0.5 * H / tan(fovy / 2)`` (fovy is the vertical field of view, the
  same focal is used along x, so the horizontal field of view follows from the aspect W / H).
* Projection: the standard OpenGL perspective matrix (``proj[1, 1] = +1 / tan(fovy / 2)``), so
  NDC x = -1 / +1 are the left / right image edges, NDC y = +1 / -1 the TOP / BOTTOM edges
  (row 0 <=> NDC y = +1), NDC z = -1 / +1 the near / far planes. A pixel centre (row i, column j)
  has NDC ``x = 2 (j + 0.5) / W - 1``, ``y = 1 - 2 (i + 0.5) / H`` (see `ndc_to_pixel`).
  Note: threestudio negates ``proj[1, 1]`` to suit nvdiffrast, whose output row 0 is NDC y = -1;
  lift3d keeps the plain OpenGL matrix, so a rasterizer writing row 0 at NDC y = -1 must flip
  its output vertically to match the rays.

Shapes in the docstrings: B = batch, H, W = image height and width.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Number = Union[int, float]


def _as_tensor(x: Union[Number, Sequence[Number], Tensor], like: Optional[Tensor] = None) -> Tensor:
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.float()
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=dtype, device=device)


def spherical_to_cartesian(
    elevation_deg: Union[Number, Tensor],
    azimuth_deg: Union[Number, Tensor],
    distance: Union[Number, Tensor],
) -> Tensor:
    """Camera position ``r (cos e cos a, cos e sin a, sin e)`` from angles in degrees.

    elevation_deg, azimuth_deg, distance: broadcastable [B] (or scalars) -> positions [B, 3].
    """
    elevation = torch.deg2rad(_as_tensor(elevation_deg))
    azimuth = torch.deg2rad(_as_tensor(azimuth_deg, elevation))
    r = _as_tensor(distance, elevation)
    elevation, azimuth, r = torch.broadcast_tensors(elevation, azimuth, r)
    return torch.stack(
        [
            r * torch.cos(elevation) * torch.cos(azimuth),
            r * torch.cos(elevation) * torch.sin(azimuth),
            r * torch.sin(elevation),
        ],
        dim=-1,
    )


def look_at_c2w(
    camera_positions: Tensor, center: Optional[Tensor] = None, up: Optional[Tensor] = None
) -> Tensor:
    """OpenGL camera-to-world matrices of cameras at `camera_positions` looking at `center`.

    camera_positions [B, 3]; center [B, 3] (default: origin); up [B, 3] (default: +z, need not be
    unit or exactly orthogonal to the view direction) -> c2w [B, 4, 4] with columns
    (right, up, backward, position), rotation part orthonormal with determinant +1.

    Where the view direction is parallel to `up` (a camera at a pole looking straight down or up),
    the up hint is replaced by -x (or +y if the view is along x), which is the limit of the
    regular frame when approaching the pole from azimuth 0.
    """
    pos = camera_positions
    if center is None:
        center = torch.zeros_like(pos)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=pos.dtype, device=pos.device).expand_as(pos)
    center, up = torch.broadcast_tensors(center.to(pos), up.to(pos))
    forward = F.normalize(center - pos, dim=-1)  # [B, 3], the -z axis of the camera
    right = torch.linalg.cross(forward, up, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6 * up.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if degenerate.any():
        minus_x = torch.tensor([-1.0, 0.0, 0.0], dtype=pos.dtype, device=pos.device).expand_as(pos)
        plus_y = torch.tensor([0.0, 1.0, 0.0], dtype=pos.dtype, device=pos.device).expand_as(pos)
        alt_up = torch.where(forward[..., :1].abs() < 0.9, minus_x, plus_y)
        right = torch.where(degenerate, torch.linalg.cross(forward, alt_up, dim=-1), right)
    right = F.normalize(right, dim=-1)
    true_up = torch.linalg.cross(right, forward, dim=-1)  # unit: right ⟂ forward, both unit
    c2w = torch.zeros(*pos.shape[:-1], 4, 4, dtype=pos.dtype, device=pos.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = true_up
    c2w[..., :3, 2] = -forward
    c2w[..., :3, 3] = pos
    c2w[..., 3, 3] = 1.0
    return c2w


def c2w_to_w2c(c2w: Tensor) -> Tensor:
    """Inverse of a rigid camera-to-world matrix: [..., 4, 4] -> world-to-camera [..., 4, 4].

    Uses ``[R | t]^-1 = [R^T | -R^T t]`` (exact for the orthonormal `look_at_c2w` output).
    """
    rot_t = c2w[..., :3, :3].transpose(-1, -2)
    w2c = torch.zeros_like(c2w)
    w2c[..., :3, :3] = rot_t
    w2c[..., :3, 3] = -(rot_t @ c2w[..., :3, 3:4])[..., 0]
    w2c[..., 3, 3] = 1.0
    return w2c


def focal_from_fovy(fovy: Union[Number, Tensor], height: int) -> Union[float, Tensor]:
    """Focal length in pixels ``0.5 * H / tan(fovy / 2)``; fovy in radians (float or [B])."""
    if isinstance(fovy, Tensor):
        return 0.5 * height / torch.tan(0.5 * fovy)
    return 0.5 * height / math.tan(0.5 * fovy)


def get_ray_directions(
    H: int,
    W: int,
    focal: Union[Number, Tuple[Number, Number], Tensor],
    principal: Optional[Tuple[Number, Number]] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    """Camera-space directions through pixel centres (x right, y up, z = -1), not normalised.

    focal: one focal length in pixels, a pair (fx, fy), or a tensor [B] of per-camera focals;
    principal: (cx, cy) in pixels measured from the top-left corner (default (W / 2, H / 2));
    device: where to build the result (default: the focal tensor's device, else CPU).
    Returns [H, W, 3] (or [B, H, W, 3] for a tensor focal); entry [i, j] (row i from the top,
    column j from the left) is ``((j + 0.5 - cx) / fx, -(i + 0.5 - cy) / fy, -1)``.
    """
    if device is None and isinstance(focal, Tensor):
        device = focal.device
    cx, cy = (W / 2.0, H / 2.0) if principal is None else principal
    j = torch.arange(W, dtype=torch.float32, device=device) + 0.5  # [W]
    i = torch.arange(H, dtype=torch.float32, device=device) + 0.5  # [H]
    x = (j - cx)[None, :].expand(H, W)  # [H, W]
    y = -(i - cy)[:, None].expand(H, W)
    z = -torch.ones(H, W, device=device)
    if isinstance(focal, Tensor) and focal.dim() > 0:
        f = focal.float().to(device)[:, None, None]  # [B, 1, 1]
        x, y = x[None] / f, y[None] / f
        return torch.stack([x, y, z[None].expand_as(x)], dim=-1)  # [B, H, W, 3]
    if isinstance(focal, (tuple, list)):
        fx, fy = float(focal[0]), float(focal[1])
    else:
        fx = fy = float(focal)
    return torch.stack([x / fx, y / fy, z], dim=-1)  # [H, W, 3]


def get_rays(
    directions: Tensor,
    c2w: Tensor,
    keepdim: bool = True,
    normalize: bool = True,
    noise_scale: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """World-space rays of camera-space `directions` for the cameras `c2w`.

    directions [H, W, 3] (shared by all cameras) or [B, H, W, 3]; c2w [B, 4, 4] (or [4, 4]).
    Returns rays_o, rays_d [B, H, W, 3] (keepdim) or [B*H*W, 3]; rays_d has unit length when
    `normalize`. `noise_scale` > 0 adds Gaussian noise of that std to origins and directions
    (before normalisation), drawn from `generator`.
    """
    rot = c2w[..., :3, :3].to(directions)  # [B, 3, 3]
    origin = c2w[..., :3, 3].to(directions)  # [B, 3]
    if rot.dim() == 3:
        rot = rot[:, None]  # [B, 1, 3, 3] broadcasts against the H rows of directions
    rays_d = directions @ rot.transpose(-1, -2)  # d_world = R d_cam, [B, H, W, 3]
    rays_o = origin[..., None, None, :].expand_as(rays_d)
    if noise_scale > 0:
        rays_o = rays_o + noise_scale * torch.randn(
            rays_o.shape, generator=generator, dtype=rays_o.dtype
        ).to(rays_o.device)
        rays_d = rays_d + noise_scale * torch.randn(
            rays_d.shape, generator=generator, dtype=rays_d.dtype
        ).to(rays_d.device)
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    if not keepdim:
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    return rays_o.contiguous(), rays_d.contiguous()


def get_projection_matrix(
    fovy: Union[Number, Tensor], aspect_wh: float, near: float, far: float
) -> Tensor:
    """OpenGL perspective projection: fovy [B] (radians, vertical) -> [B, 4, 4].

    Maps camera space (looking down -z) to clip space; after the divide by w, the view frustum
    becomes NDC [-1, 1]^3 with y = +1 at the top edge and z = -1 at the near plane.
    A float fovy gives a [4, 4] matrix.
    """
    fovy_t = _as_tensor(fovy)
    t = torch.tan(0.5 * fovy_t)
    proj = torch.zeros(*fovy_t.shape, 4, 4, dtype=fovy_t.dtype, device=fovy_t.device)
    proj[..., 0, 0] = 1.0 / (aspect_wh * t)
    proj[..., 1, 1] = 1.0 / t
    proj[..., 2, 2] = -(far + near) / (far - near)
    proj[..., 2, 3] = -2.0 * far * near / (far - near)
    proj[..., 3, 2] = -1.0
    return proj


def get_mvp_matrix(c2w: Tensor, proj_mtx: Tensor) -> Tensor:
    """Model-view-projection ``proj @ inverse(c2w)``: [B, 4, 4], [B, 4, 4] -> [B, 4, 4]."""
    return proj_mtx @ c2w_to_w2c(c2w)


def project_points(points: Tensor, mvp_mtx: Tensor) -> Tuple[Tensor, Tensor]:
    """Project world points with `mvp_mtx`: points [B, N, 3], mvp [B, 4, 4] -> (ndc [B, N, 3], w [B, N]).

    w is the clip-space w (the depth along the view axis; > 0 in front of the camera).
    """
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # [B, N, 4]
    clip = homo @ mvp_mtx.transpose(-1, -2)
    w = clip[..., 3]
    return clip[..., :3] / w[..., None], w


def ndc_to_pixel(ndc_xy: Tensor, H: int, W: int) -> Tensor:
    """NDC (x, y) [..., 2] -> continuous pixel (column, row) [..., 2] in the rays' convention.

    Integer results are pixel centres: column j <=> x = 2 (j + 0.5) / W - 1 and row i (0 = top)
    <=> y = 1 - 2 (i + 0.5) / H.
    """
    col = (ndc_xy[..., 0] + 1.0) * 0.5 * W - 0.5
    row = (1.0 - ndc_xy[..., 1]) * 0.5 * H - 0.5
    return torch.stack([col, row], dim=-1)
