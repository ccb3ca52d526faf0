"""`textured-background`: a learned texture on the sphere of view directions (SJC's background;
docs/methods/sjc.md §3).

A direction d = (x, y, z) reads the texture [1, C, height, width] at
    u = atan2(sqrt(x² + y²), z) / pi            (polar angle from +z, in [0, 1])
    v = atan2(y, x) / (2 pi) + 0.5               (azimuth, in [0, 1])
by bilinear `grid_sample` (reflection padding), then `color_activation`. The texture starts N(0, 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lift3d.background.base import BaseBackground
from lift3d.networks.mlp import get_activation
from lift3d.registry import register


def direction_to_uv(dirs: torch.Tensor) -> torch.Tensor:
    """dirs [N,3] -> (u, v) [N,2] in [0,1] (see the module docstring)."""
    x, y, z = dirs.unbind(-1)
    u = torch.atan2((x**2 + y**2).sqrt(), z) / math.pi
    v = torch.atan2(y, x) / (2.0 * math.pi) + 0.5
    return torch.stack([u, v], -1)


@register("textured-background")
class TexturedBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        height: int = 64
        width: int = 64
        color_activation: str = "sigmoid"

    def configure(self) -> None:
        self.texture = nn.Parameter(torch.randn(1, self.cfg.n_output_dims, self.cfg.height, self.cfg.width))
        self.activation = get_activation(self.cfg.color_activation)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        # dirs [..., 3] -> colour [..., C]; grid_sample's (x, y) = (u, v): u along the width, v along the height
        shape = dirs.shape[:-1]
        uv = direction_to_uv(dirs.reshape(-1, 3)) * 2.0 - 1.0
        color = F.grid_sample(self.texture, uv.reshape(1, -1, 1, 2).to(self.texture), mode="bilinear",
                              padding_mode="reflection", align_corners=False)
        return self.activation(color.reshape(self.cfg.n_output_dims, -1).T.reshape(*shape, self.cfg.n_output_dims))


__all__ = ["TexturedBackground", "direction_to_uv"]
