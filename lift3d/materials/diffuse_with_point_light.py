"""`diffuse-with-point-light-material`: Lambertian albedo under one point light plus ambient.

Training follows DreamFusion's shading augmentation: for the first `ambient_only_steps` steps the
albedo is shown unshaded; afterwards each render is, at random, unshaded (1 − diffuse_prob),
diffusely lit with albedo, or lit without albedo ("textureless", textureless_prob of the lit
renders). Evaluation renders are always lit with albedo.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lift3d.materials.base import BaseMaterial
from lift3d.networks.mlp import get_activation
from lift3d.registry import register


@register("diffuse-with-point-light-material")
class DiffuseWithPointLightMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        ambient_light_color: list = field(default_factory=lambda: [0.1, 0.1, 0.1])
        diffuse_light_color: list = field(default_factory=lambda: [0.9, 0.9, 0.9])
        ambient_only_steps: int = 1000
        diffuse_prob: float = 0.75
        textureless_prob: float = 0.5
        albedo_activation: str = "sigmoid"
        soft_shading: bool = False  # random light colour instead of the configured one

    requires_normal = True

    def configure(self) -> None:
        self.register_buffer("ambient_color", torch.tensor(self.cfg.ambient_light_color, dtype=torch.float32))
        self.register_buffer("diffuse_color", torch.tensor(self.cfg.diffuse_light_color, dtype=torch.float32))
        self.activation = get_activation(self.cfg.albedo_activation)
        self.ambient_only = False

    def update_step(self, epoch: int, global_step: int) -> None:
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def _choose_shading(self) -> str:
        if not self.training:
            return "diffuse"
        if self.ambient_only or random.random() > self.cfg.diffuse_prob:
            return "albedo"
        return "textureless" if random.random() < self.cfg.textureless_prob else "diffuse"

    def forward(
        self,
        features: torch.Tensor,  # [..., F]
        positions: torch.Tensor,  # [..., 3]
        shading_normal: torch.Tensor,  # [..., 3]
        light_positions: torch.Tensor,  # [..., 3]
        shading: Optional[str] = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        albedo = self.activation(features[..., :3])
        shading = shading or self._choose_shading()
        if shading == "albedo":
            return albedo
        light_dir = F.normalize(light_positions - positions, dim=-1)
        diffuse_color = self.diffuse_color
        if self.cfg.soft_shading and self.training:
            diffuse_color = torch.full_like(diffuse_color, random.random())
        cos = (shading_normal * light_dir).sum(-1, keepdim=True).clamp(min=0.0)
        light = cos * diffuse_color + self.ambient_color
        if shading == "textureless":
            return light.clamp(0.0, 1.0).expand_as(albedo)
        return (albedo * light).clamp(0.0, 1.0)

    def export(self, features: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {"albedo": self.activation(features[..., :3]).clamp(0.0, 1.0)}
