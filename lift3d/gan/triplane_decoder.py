"""Tri-plane feature sampling and the small decoder MLP (EG3D arXiv 2112.07945 §4.1, Fig. 3).

A point p is projected onto the xy, xz and yz planes, each plane is sampled bilinearly, the three
feature vectors are averaged (EG3D: "aggregated by summation"; the mean is the same up to a
scale the MLP absorbs) and decoded into a density and colour features. EG3D names: `decoder.net.0`,
`decoder.net.2` (FC, softplus, FC).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lift3d.gan.layers import FullyConnectedLayer

# plane k uses these two coordinates of p as its (u, v) = (grid_sample x, grid_sample y)
PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # xy, xz, yz


def sample_triplane(planes: Tensor, points: Tensor, box_warp: float) -> Tensor:
    """planes [B,3,C,R,R], points [B,P,3] in world units -> mean feature [B,P,C].

    Coordinates are scaled by 2/box_warp so the cube [-box_warp/2, box_warp/2]³ fills the planes;
    outside it, features are zero (grid_sample zero padding)."""
    b, _, c, r, _ = planes.shape
    q = points * (2.0 / box_warp)  # [B,P,3] in [-1,1] inside the box
    feats = 0
    for k, (i, j) in enumerate(PLANE_AXES):
        grid = q[..., [i, j]][:, :, None, :]  # [B,P,1,2]
        sampled = F.grid_sample(planes[:, k], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        feats = feats + sampled[..., 0].transpose(1, 2)  # [B,P,C]
    return feats / 3.0


class TriPlaneDecoder(nn.Module):
    """features [B,P,C] -> (raw density [B,P,1], colour features [B,P,F]; the first 3 are RGB in [0,1])."""

    def __init__(self, in_channels: int, hidden: int = 64, out_features: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(FullyConnectedLayer(in_channels, hidden), nn.Softplus(),
                                 FullyConnectedLayer(hidden, 1 + out_features))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = self.net(features)  # [B,P,1+F]
        colour = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001  # EG3D's clamped sigmoid
        return x[..., :1], colour
