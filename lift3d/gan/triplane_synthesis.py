"""The synthesis network that draws the three feature planes (EG3D arXiv 2112.07945 §4.1: a StyleGAN2
backbone whose output is 3 × C channels, reshaped into the xy, xz and yz planes).

Skip architecture (StyleGAN2 arXiv 1912.04958 §4.1, Fig. 7b): block b4 starts from a learnt constant;
each block b{2r} upsamples (conv0) and convolves (conv1), and its `torgb` adds to the upsampled
output of the previous block. EG3D names: `synthesis.b{res}.const`, `.conv0`, `.conv1`, `.torgb`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lift3d.gan.layers import ModulatedConv


def block_channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """StyleGAN2's channel count of the block at `resolution`: min(channel_base // res, channel_max)."""
    return max(1, min(channel_base // resolution, channel_max))


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, img_channels: int, w_dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        if in_channels == 0:  # the first block starts from a constant
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = ModulatedConv(in_channels, out_channels, w_dim, up=True)
        self.conv1 = ModulatedConv(out_channels, out_channels, w_dim)
        self.torgb = ModulatedConv(out_channels, img_channels, w_dim, kernel_size=1, demodulate=False, activation=False)
        self.num_ws = 2 if in_channels == 0 else 3  # ws used (torgb shares the next block's first w)

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor) -> tuple[Tensor, Tensor]:
        """x [B,I,r/2,r/2] (None for b4), img [B,3C,r/2,r/2] (None for b4), ws [B,num_ws,w_dim]
        -> (x [B,O,r,r], img [B,3C,r,r])."""
        if x is None:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0])
        else:
            x = self.conv0(x, ws[:, 0])
            x = self.conv1(x, ws[:, 1])
        y = self.torgb(x, ws[:, -1])
        img = y if img is None else F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False) + y
        return x, img


class TriPlaneSynthesis(nn.Module):
    """ws [B, num_ws, w_dim] -> planes [B, 3, C, R, R] (xy, xz, yz), R = `plane_resolution`."""

    def __init__(self, w_dim: int, plane_resolution: int, plane_channels: int, channel_base: int,
                 channel_max: int) -> None:
        super().__init__()
        log2 = int(math.log2(plane_resolution))
        if plane_resolution < 4 or 2**log2 != plane_resolution:
            raise ValueError(f"plane_resolution must be a power of two >= 4, got {plane_resolution}")
        self.plane_channels = plane_channels
        self.resolutions = [2**i for i in range(2, log2 + 1)]
        self.num_ws = 0
        in_ch = 0
        for res in self.resolutions:
            out_ch = block_channels(res, channel_base, channel_max)
            block = SynthesisBlock(in_ch, out_ch, 3 * plane_channels, w_dim, res)
            setattr(self, f"b{res}", block)
            self.num_ws += block.num_ws - 1  # consecutive blocks share one w (the torgb/conv0 boundary)
            in_ch = out_ch
        self.num_ws += 1

    def forward(self, ws: Tensor) -> Tensor:
        x = img = None
        w_index = 0
        for res in self.resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws[:, w_index: w_index + block.num_ws])
            w_index += block.num_ws - 1
        b, _, r, _ = img.shape
        return img.reshape(b, 3, self.plane_channels, r, r)
