"""Horizontal-flip augmentation with the mirrored camera label (StyleAvatar3D, data generation: flip images with
their labels; EG3D's FFHQ preprocessing mirrors the same way). docs/methods/styleavatar3d.md.

Flipping an image left-right shows the scene mirrored through the plane spanned by the scene's `up` axis
and its `front` axis. The mirrored camera (OpenCV cam2world [R | t], lift3d.gan.camera_label) is
    R' = M R F,   t' = M t,   M = I - 2 s sᵀ (s = up × front, the side axis),   F = diag(-1, 1, 1)
(M mirrors the world; F flips the camera's x so R' stays a rotation and the image is the flipped one),
and the principal point moves to cx' = 1 - cx. So yaw -> -yaw, pitch unchanged
(custom/styleavatar3d/pose_bins.yaw_pitch_from_labels). With up = y, front = z this negates cam2world
entries (0,1), (0,2), (1,0), (2,0), (0,3): EG3D's `flip_yaw`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lift3d.gan.camera_label import make_label, split_label


def side_axis(up: Sequence[float], front: Sequence[float]) -> Tensor:
    """[3] unit side axis s = up × front (front made orthogonal to up first)."""
    u = F.normalize(torch.as_tensor(up, dtype=torch.float32), dim=0)
    f = torch.as_tensor(front, dtype=torch.float32)
    f = F.normalize(f - (f @ u) * u, dim=0)
    return torch.linalg.cross(u, f, dim=0)


def mirror_labels(labels: Tensor, up: Sequence[float] = (0.0, 0.0, 1.0),
                  front: Sequence[float] = (1.0, 0.0, 0.0)) -> Tensor:
    """labels [B,25] -> the labels of the horizontally flipped images [B,25]."""
    cam2world, k = split_label(labels)
    s = side_axis(up, front).to(labels)
    mirror = torch.eye(3, dtype=labels.dtype, device=labels.device) - 2 * torch.outer(s, s)  # [3,3]
    flip_x = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=labels.dtype, device=labels.device))
    out = cam2world.clone()
    out[:, :3, :3] = mirror @ cam2world[:, :3, :3] @ flip_x
    out[:, :3, 3] = cam2world[:, :3, 3] @ mirror.T
    k = k.clone()
    k[:, 0, 2] = 1.0 - k[:, 0, 2]
    return make_label(out, k)


def flip_images_and_labels(images: Tensor, labels: Tensor, up: Sequence[float] = (0.0, 0.0, 1.0),
                           front: Sequence[float] = (1.0, 0.0, 0.0)) -> tuple[Tensor, Tensor]:
    """(images [B,C,H,W], labels [B,25]) -> (left-right flipped images, mirrored labels)."""
    return images.flip(-1), mirror_labels(labels, up, front)
