"""Material base: turns geometry features into colour.

`forward(features [...,F], viewdirs [...,3], shading_normal [...,3] | None, light_positions [...,3],
positions [...,3]) -> rgb [...,3]`; `requires_normal` says whether the renderer must supply normals.
`export(features) -> {name: [...,C]}` gives the textures an exporter bakes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lift3d.utils.base import BaseModule


class BaseMaterial(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    requires_normal: bool = False

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def export(self, features: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {}
