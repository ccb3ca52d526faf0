"""Background base: colour of rays that leave the scene. `forward(dirs [B,H,W,3]) -> [B,H,W,3]`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lift3d.utils.base import BaseModule


class BaseBackground(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
