"""EG3D's 25-D camera label and the rays it defines.

Label = cam2world 4×4 flattened row-major (16) + normalised intrinsics 3×3 flattened (9), as in
EG3D's `dataset.json` (arXiv 2112.07945, §4 / supplement "dataset"; DATID-3D uses the same files):
- cam2world in OpenCV convention: camera x right, y down, z forward (looking along +z);
- intrinsics normalised by the image size: [[fx/W, 0, cx/W], [0, fy/H, cy/H], [0, 0, 1]]
  (principal point 0.5 for centred cameras), so one label serves every resolution.

lift3d's own cameras (lift3d.data.cameras, the toy world) are OpenGL (y up, looking along -z):
`opengl_to_opencv_c2w` flips the camera's y and z axes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LABEL_DIM = 25
_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opengl_to_opencv_c2w(c2w: Tensor) -> Tensor:
    """[..., 4, 4] OpenGL camera-to-world -> OpenCV camera-to-world (flip the camera's y and z)."""
    return c2w @ _OPENGL_TO_OPENCV.to(c2w)


def normalized_intrinsics(fov_y_deg: float | Tensor, batch: int = 1) -> Tensor:
    """[batch, 3, 3] normalised intrinsics of a square pinhole camera with vertical field of view
    `fov_y_deg` and the principal point at the image centre (fx/W = 0.5 / tan(fov/2))."""
    fov = torch.as_tensor(fov_y_deg, dtype=torch.float32).reshape(-1)
    focal = 0.5 / torch.tan(torch.deg2rad(fov) / 2)  # [b]
    k = torch.zeros(max(batch, focal.numel()), 3, 3)
    k[:, 0, 0] = focal
    k[:, 1, 1] = focal
    k[:, 0, 2] = 0.5
    k[:, 1, 2] = 0.5
    k[:, 2, 2] = 1.0
    return k


def make_label(cam2world_opencv: Tensor, intrinsics: Tensor) -> Tensor:
    """([B,4,4] OpenCV cam2world, [B,3,3] normalised intrinsics) -> labels [B,25]."""
    b = cam2world_opencv.shape[0]
    return torch.cat([cam2world_opencv.reshape(b, 16), intrinsics.reshape(b, 9).to(cam2world_opencv)], dim=1)


def split_label(label: Tensor) -> tuple[Tensor, Tensor]:
    """labels [B,25] -> (cam2world [B,4,4], intrinsics [B,3,3])."""
    if label.shape[-1] != LABEL_DIM:
        raise ValueError(f"camera labels must be [B, {LABEL_DIM}] (16 cam2world + 9 intrinsics), got {tuple(label.shape)}")
    b = label.shape[0]
    return label[:, :16].reshape(b, 4, 4), label[:, 16:].reshape(b, 3, 3)


def rays_from_label(label: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions of every pixel centre, row-major (row 0 = image top).

    label [B,25] -> (origins [B,R*R,3], directions [B,R*R,3]) with R = `resolution`.
    Pixel (row i, column j) has normalised coordinates u = (j+0.5)/R, v = (i+0.5)/R; its camera
    direction is ((u - cx)/fx, (v - cy)/fy, 1) in OpenCV camera space (skew ignored).
    """
    cam2world, k = split_label(label)
    b = label.shape[0]
    centres = (torch.arange(resolution, device=label.device, dtype=label.dtype) + 0.5) / resolution  # [R]
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # [R,R] each: v = row, u = column
    u, v = u.reshape(1, -1), v.reshape(1, -1)  # [1,R*R]
    fx, fy, cx, cy = k[:, 0, 0:1], k[:, 1, 1:2], k[:, 0, 2:3], k[:, 1, 2:3]  # [B,1]
    dirs_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u).expand(b, -1)], dim=-1)  # [B,R*R,3]
    dirs = F.normalize(dirs_cam @ cam2world[:, :3, :3].transpose(1, 2), dim=-1)  # [B,R*R,3]
    origins = cam2world[:, None, :3, 3].expand_as(dirs)  # [B,R*R,3]
    return origins, dirs


def scene_up(labels: Tensor) -> Tensor:
    """The scene's up axis [3] estimated from labels [N,25]: the mean of the cameras' up vectors
    (-y in OpenCV), normalised. Tilts of cameras spread around the object cancel (for a single
    camera it is that camera's own up)."""
    cam2world, _ = split_label(labels)
    return F.normalize(-cam2world[:, :3, 1].mean(0), dim=0)


def orbit_labels(label: Tensor, n_frames: int, up: Tensor | None = None) -> Tensor:
    """A turntable around the axis `up` [3] through the origin (default: the camera's own up),
    starting at camera `label` [25]: frame k is the camera rotated by 2πk/n (Rodrigues). -> [n_frames, 25]."""
    cam2world, k = split_label(label.reshape(1, -1))
    up = scene_up(label.reshape(1, -1)) if up is None else F.normalize(up.to(label), dim=0)
    frames = []
    for i in range(n_frames):
        angle = 2 * math.pi * i / n_frames
        cross = torch.tensor([[0.0, -up[2], up[1]], [up[2], 0.0, -up[0]], [-up[1], up[0], 0.0]], dtype=label.dtype)
        rot = torch.eye(3, dtype=label.dtype) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
        c2w = cam2world[0].clone()
        c2w[:3, :3] = rot @ cam2world[0, :3, :3]
        c2w[:3, 3] = rot @ cam2world[0, :3, 3]
        frames.append(make_label(c2w[None], k))
    return torch.cat(frames, 0)


def look_at_labels(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor, fov_y_deg: float) -> Tensor:
    """[N,25] labels of cameras on a sphere looking at the origin (lift3d's z-up spherical convention,
    docs/methods/threestudio-conventions.md), e.g. to render a source generator at sampled cameras."""
    from lift3d.data.cameras import look_at_c2w, spherical_to_cartesian

    c2w = look_at_c2w(spherical_to_cartesian(elevation_deg, azimuth_deg, distance))  # [N,4,4] OpenGL
    return make_label(opengl_to_opencv_c2w(c2w), normalized_intrinsics(fov_y_deg, elevation_deg.shape[0]))
