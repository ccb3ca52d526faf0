"""`camera-conditioned-discriminator`: StyleGAN2's residual discriminator (arXiv 1912.04958 §4.1,
Fig. 7c) with a projection of the camera label (EG3D arXiv 2112.07945 §4.2 "dual discrimination"
and pose conditioning; StyleGAN2-ADA's conditional epilogue).

Input: the final image [B,3,H,W] and, with `dual` (EG3D's dual discrimination), the raw neural
rendering upsampled to H×W and stacked with it ([B,6,H,W]), so the super-resolved image has to agree
with the 3D render. Output: a logit per image, conditioned on its camera label c [B,25] by projection:
logit = <φ(x), cmap(c)> / sqrt(cmap_dim), cmap = a mapping network of c.

EG3D names: `b<res>.{fromrgb,conv0,conv1,skip}`, `mapping.{embed,fc<i>}`, `b4.{conv,fc,out}`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lift3d.errors import ConfigError
from lift3d.gan.camera_label import LABEL_DIM
from lift3d.gan.layers import Conv2dLayer, FullyConnectedLayer
from lift3d.gan.mapping_network import MappingNetwork
from lift3d.gan.triplane_synthesis import block_channels
from lift3d.registry import register
from lift3d.utils.base import BaseModule


class DiscriminatorBlock(nn.Module):
    """Residual block: (conv0, conv1↓) + skip↓, scaled by sqrt(1/2). `fromrgb` on the first block only."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int) -> None:
        super().__init__()
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, down=True)
        self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, down=True, activation=False, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B,I,r,r] -> [B,O,r/2,r/2]
        if hasattr(self, "fromrgb"):
            x = self.fromrgb(x)
        y = self.skip(x)
        x = self.conv1(self.conv0(x))
        return (x + y) * math.sqrt(0.5)


def minibatch_stddev(x: Tensor, group_size: int) -> Tensor:
    """Append the std over groups of samples, averaged over channels and pixels, as one more channel
    (ProGAN §3, StyleGAN2's MinibatchStdLayer). x [B,C,H,W] -> [B,C+1,H,W]."""
    b, c, h, w = x.shape
    g = min(group_size, b)
    while b % g:
        g -= 1
    y = x.reshape(g, -1, c, h, w)  # [G, B/G, C, H, W]
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # [B/G, C, H, W]
    y = y.mean(dim=(1, 2, 3))  # [B/G]
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # [B, 1, H, W]
    return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels: int, cmap_dim: int, mbstd_group_size: int) -> None:
        super().__init__()
        self.mbstd_group_size = mbstd_group_size
        self.conv = Conv2dLayer(in_channels + 1, in_channels)
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation=True)
        self.out = FullyConnectedLayer(in_channels, cmap_dim)
        self.cmap_dim = cmap_dim

    def forward(self, x: Tensor, cmap: Tensor) -> Tensor:  # x [B,C,4,4], cmap [B,cmap_dim] -> [B,1]
        x = self.conv(minibatch_stddev(x, self.mbstd_group_size))
        x = self.out(self.fc(x.flatten(1)))  # [B, cmap_dim]
        return (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)


@register("camera-conditioned-discriminator")
class CameraConditionedDiscriminator(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        image_resolution: int = 128
        dual: bool = True  # also see the raw neural rendering (EG3D's dual discrimination)
        channel_base: int = 32768
        channel_max: int = 512
        cmap_dim: int = 128
        mapping_layers: int = 2
        mbstd_group_size: int = 4

    @classmethod
    def validate_config(cls, cfg: Any, path: str) -> None:
        r = int(cfg.image_resolution)
        if r < 8 or r & (r - 1):
            raise ConfigError(f"{path}.image_resolution = {r} must be a power of two >= 8 (e.g. 32, 64, 128).")
        for key in ("cmap_dim", "mapping_layers", "mbstd_group_size", "channel_base", "channel_max"):
            if cfg[key] < 1:
                raise ConfigError(f"{path}.{key} = {cfg[key]} must be >= 1.")

    def configure(self) -> None:
        cfg = self.cfg
        type(self).validate_config(cfg, "discriminator")
        self.resolutions = [2**i for i in range(int(math.log2(cfg.image_resolution)), 2, -1)]  # R ... 8
        img_channels = 6 if cfg.dual else 3
        in_ch = 0
        for res in self.resolutions:
            tmp = block_channels(res, cfg.channel_base, cfg.channel_max)
            out = block_channels(res // 2, cfg.channel_base, cfg.channel_max)
            setattr(self, f"b{res}", DiscriminatorBlock(in_ch, tmp, out, img_channels))
            in_ch = out
        self.mapping = MappingNetwork(0, LABEL_DIM, cfg.cmap_dim, num_ws=1, num_layers=cfg.mapping_layers, lr_mul=1.0)
        self.b4 = DiscriminatorEpilogue(in_ch, cfg.cmap_dim, cfg.mbstd_group_size)

    def forward(self, image: Tensor, c: Tensor, image_raw: Tensor | None = None,
                augment: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
        """image [B,3,R,R] in [-1,1]; c [B,25]; image_raw [B,3,r,r] (dual) -> logits [B,1].
        `augment` ([B,3k,R,R] -> same) is applied to the stacked input (the same for both halves)."""
        r = self.cfg.image_resolution
        if image.shape[-1] != r or image.shape[-2] != r:
            raise ValueError(f"discriminator expects {r}x{r} images, got {tuple(image.shape[-2:])}")
        x = image
        if self.cfg.dual:
            raw = image if image_raw is None else image_raw
            x = torch.cat([image, F.interpolate(raw, size=(r, r), mode="bilinear", align_corners=False)], dim=1)
        if augment is not None:
            x = augment(x)
        for res in self.resolutions:
            x = getattr(self, f"b{res}")(x)
        cmap = self.mapping(None, c)[:, 0]  # [B, cmap_dim]
        return self.b4(x, cmap)
