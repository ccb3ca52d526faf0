"""`no-material`: colour straight from the geometry features (optionally through an MLP)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from lift3d.materials.base import BaseMaterial
from lift3d.networks.mlp import get_activation, get_mlp
from lift3d.registry import register


@register("no-material")
class NoMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        input_feature_dims: Optional[int] = None  # with mlp_network_config: features → MLP → colour
        mlp_network_config: Optional[dict] = None
        requires_normal: bool = False

    def configure(self) -> None:
        self.requires_normal = self.cfg.requires_normal
        self.network = None
        if self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None:
            self.network = get_mlp(self.cfg.input_feature_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)
        self.activation = get_activation(self.cfg.color_activation)

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        # features [..., F] → colour [..., n_output_dims]
        if self.network is not None:
            shape = features.shape[:-1]
            raw = self.network(features.reshape(-1, features.shape[-1])).reshape(*shape, self.cfg.n_output_dims)
        else:
            raw = features[..., : self.cfg.n_output_dims]
        return self.activation(raw)

    def export(self, features: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        color = self(features).clamp(0.0, 1.0)
        return {"albedo": color[..., :3]}
