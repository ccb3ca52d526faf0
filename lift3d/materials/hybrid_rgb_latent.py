"""`hybrid-rgb-latent-material`: threestudio's material for Control4D (docs/methods/control4d.md §"GAN renderer").

The geometry's features [..., n_output_dims] pass through: the first 3 channels are the colour (through
`color_activation`, sigmoid by default), the rest are the latent channels the GAN renderer reads as a
diagonal Gaussian (mean and log-variance of the generator's latent code), left as they are.
`requires_normal` (true by default) makes the renderer compute normals (the orientation loss needs them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lift3d.errors import ConfigError
from lift3d.materials.base import BaseMaterial
from lift3d.networks.mlp import get_activation
from lift3d.registry import register


@register("hybrid-rgb-latent-material")
class HybridRGBLatentMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        requires_normal: bool = True

    @classmethod
    def validate_config(cls, cfg: Any, path: str = "system.material") -> None:
        if cfg.n_output_dims < 3:
            raise ConfigError(f"{path}.n_output_dims = {cfg.n_output_dims}: give at least 3 (RGB, then latent channels).")
        get_activation(cfg.color_activation)

    def configure(self) -> None:
        self.requires_normal = self.cfg.requires_normal
        self.activation = get_activation(self.cfg.color_activation)

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """features [..., n_output_dims] -> [activation(rgb), latent] [..., n_output_dims]."""
        if features.shape[-1] != self.cfg.n_output_dims:
            raise ValueError(f"hybrid-rgb-latent-material expects {self.cfg.n_output_dims} feature channels, got "
                             f"{features.shape[-1]}: set system.geometry.n_feature_dims = system.material.n_output_dims.")
        return torch.cat([self.activation(features[..., :3]), features[..., 3:]], dim=-1)

    def export(self, features: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {"albedo": self(features)[..., :3].clamp(0.0, 1.0)}


__all__ = ["HybridRGBLatentMaterial"]
