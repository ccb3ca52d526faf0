"""Control4D's super-resolution generator and local encoder (docs/methods/control4d.md §"GAN renderer";
Shao et al., arXiv 2305.20082 v1 §3, the GAN-based generator; the encoder/decoder layout of latent diffusion's
autoencoder, Rombach et al., arXiv 2112.10752 Appendix).

`LatentSRGenerator`: a low-resolution render [B,3,h,w] and its latent code [B,z,h,w] (concatenated) ->
an image [B,3,h·2^(L-1),w·2^(L-1)] in [0,1], L = len(channel_mult). A 3×3 conv to channels·mult[-1], two
residual blocks, then per level (coarse to fine) `blocks + 1` residual blocks and a ×2 nearest upsampling
with a 3×3 conv (all levels but the finest); group norm (one group, no affine), swish, 3×3 conv, sigmoid.
Every residual block adds a projection of the global code [B,code_dims] (lift3d.gan.global_encoder) to its
features, the way a diffusion UNet adds its time embedding.

`LocalEncoder`: an image [B,3,H,W] -> the parameters [B,2z,H/2^(L-1),W/2^(L-1)] of a diagonal Gaussian
(lift3d.gan.diagonal_gaussian) over the same latent codes: a 3×3 conv, per level `blocks` residual blocks and
a stride-2 conv (all levels but the last), two residual blocks, norm, swish, 3×3 conv.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(1, channels, eps=1e-6, affine=False)


class ResidualBlock(nn.Module):
    """norm, swish, conv, (+ code projection), norm, swish, conv; 1×1 shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, code_dims: int = 0) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.code_proj = nn.Linear(code_dims, cout) if code_dims > 0 else None
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, code: Optional[Tensor] = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.code_proj is not None and code is not None:
            h = h + self.code_proj(F.silu(code))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding: exact halving of even sizes


class LatentSRGenerator(nn.Module):
    def __init__(self, in_channels: int = 7, channels: int = 64, channel_mult: Sequence[int] = (1, 2, 4),
                 blocks: int = 1, code_dims: int = 64, out_channels: int = 3) -> None:
        super().__init__()
        width = channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(in_channels, width, 3, 1, 1)
        self.mid = nn.ModuleList([ResidualBlock(width, width, code_dims) for _ in range(2)])
        self.levels = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):  # coarse to fine
            out = channels * channel_mult[level]
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            for _ in range(blocks + 1):
                stage.blocks.append(ResidualBlock(width, out, code_dims))
                width = out
            stage.upsample = Upsample(width) if level > 0 else nn.Identity()
            self.levels.append(stage)
        self.norm_out, self.conv_out = norm(width), nn.Conv2d(width, out_channels, 3, 1, 1)

    @property
    def scale(self) -> int:
        return 2 ** (len(self.levels) - 1)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        """x [B,in_channels,h,w] (render + latent code), code [B,code_dims] -> [B,3,h·scale,w·scale] in [0,1]."""
        h = self.conv_in(x)
        for block in self.mid:
            h = block(h, code)
        for stage in self.levels:
            for block in stage.blocks:
                h = block(h, code)
            h = stage.upsample(h)
        return torch.sigmoid(self.conv_out(F.silu(self.norm_out(h))))


class LocalEncoder(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 32, channel_mult: Sequence[int] = (1, 2, 4),
                 blocks: int = 1, z_channels: int = 4) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, 1, 1)
        layers: list[nn.Module] = []
        width = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(blocks):
                layers.append(ResidualBlock(width, channels * mult))
                width = channels * mult
            if level < len(channel_mult) - 1:
                layers.append(Downsample(width))
        layers += [ResidualBlock(width, width), ResidualBlock(width, width)]
        self.body = nn.ModuleList(layers)
        self.norm_out, self.conv_out = norm(width), nn.Conv2d(width, 2 * z_channels, 3, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        """image [B,3,H,W] -> Gaussian parameters [B,2z,H/scale,W/scale] (mean; log-variance)."""
        h = self.conv_in(image)
        for layer in self.body:
            h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


__all__ = ["LatentSRGenerator", "LocalEncoder", "ResidualBlock"]
