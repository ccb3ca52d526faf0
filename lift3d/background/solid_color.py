"""`solid-color-background`: one colour (optionally learned, optionally random during training)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from lift3d.background.base import BaseBackground
from lift3d.registry import register


@register("solid-color-background")
class SolidColorBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
        learned: bool = False
        random_aug: bool = False  # training: a random solid colour with probability random_aug_prob
        random_aug_prob: float = 0.5

    def configure(self) -> None:
        color = torch.tensor(self.cfg.color, dtype=torch.float32)[: self.cfg.n_output_dims]
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        # dirs [B,H,W,3] → colour [B,H,W,C]
        color = self.env_color.to(dirs)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            color = torch.rand(self.cfg.n_output_dims, device=dirs.device, dtype=dirs.dtype)
        return color.expand(*dirs.shape[:-1], self.cfg.n_output_dims)
