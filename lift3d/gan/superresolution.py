"""Optional 2D super-resolution of the neural rendering (EG3D arXiv 2112.07945 §4.1, "super-resolution
module": two StyleGAN2-modulated conv blocks per 2× step conditioned on w, with an RGB skip path).

Here: per 2× step a block `block{i}` (`conv0` up, `conv1`, `torgb`), and the RGB skip path adds the
block's `torgb` output to the bilinearly upsampled RGB. EG3D's layout (`superresolution.block0/1`) with
the block count set by the resolution ratio.
"""
from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lift3d.gan.layers import ModulatedConv


class SuperResolutionBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv0 = ModulatedConv(in_channels, channels, w_dim, up=True)
        self.conv1 = ModulatedConv(channels, channels, w_dim)
        self.torgb = ModulatedConv(channels, 3, w_dim, kernel_size=1, demodulate=False, activation=False)

    def forward(self, x: Tensor, rgb: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """x [B,I,r,r], rgb [B,3,r,r], w [B,w_dim] -> (x [B,C,2r,2r], rgb [B,3,2r,2r])."""
        x = self.conv1(self.conv0(x, w), w)
        rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False) + self.torgb(x, w)
        return x, rgb


class SuperResolution(nn.Module):
    """feature image [B,F,r,r] (first 3 channels: raw RGB in [-1,1]) -> RGB [B,3,r·2^k,r·2^k]."""

    def __init__(self, in_channels: int, channels: int, w_dim: int, input_resolution: int, output_resolution: int) -> None:
        super().__init__()
        steps = int(round(math.log2(output_resolution / input_resolution)))
        if steps < 1 or input_resolution * 2**steps != output_resolution:
            raise ValueError(
                f"super-resolution needs output = input × 2^k (k ≥ 1), got {input_resolution} -> {output_resolution}"
            )
        self.steps = steps
        for i in range(steps):
            setattr(self, f"block{i}", SuperResolutionBlock(in_channels if i == 0 else channels, channels, w_dim))

    def forward(self, features: Tensor, w: Tensor) -> Tensor:
        x, rgb = features, features[:, :3]
        for i in range(self.steps):
            x, rgb = getattr(self, f"block{i}")(x, rgb, w)
        return rgb
