"""`neural-environment-map-background`: colour as an MLP of the spherical-harmonics encoded ray
direction; optionally a random solid colour during training (USD text-to-3D uses half the time)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from lift3d.background.base import BaseBackground
from lift3d.networks.encodings import get_encoding
from lift3d.networks.mlp import get_activation, get_mlp
from lift3d.registry import register


@register("neural-environment-map-background")
class NeuralEnvironmentMapBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        dir_encoding_config: dict = field(default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3})
        mlp_network_config: dict = field(
            default_factory=lambda: {
                "otype": "VanillaMLP",
                "activation": "ReLU",
                "n_neurons": 16,
                "n_hidden_layers": 2,
            }
        )
        random_aug: bool = False
        random_aug_prob: float = 0.5
        eval_color: Optional[list] = None  # a fixed colour for validation/test renders

    def configure(self) -> None:
        self.encoding = get_encoding(3, self.cfg.dir_encoding_config)
        self.network = get_mlp(self.encoding.n_output_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)
        self.activation = get_activation(self.cfg.color_activation)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        # dirs [B,H,W,3] (any length) → colour [B,H,W,C]
        shape = dirs.shape[:-1]
        if not self.training and self.cfg.eval_color is not None:
            return torch.tensor(self.cfg.eval_color, device=dirs.device, dtype=dirs.dtype).expand(*shape, -1)
        d = F.normalize(dirs.reshape(-1, 3), dim=-1)  # [N,3] in [-1,1]
        color = self.activation(self.network(self.encoding(d))).reshape(*shape, self.cfg.n_output_dims)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            # a random solid colour, but keep the graph so the MLP's parameters still get (zero) grads
            solid = torch.rand(self.cfg.n_output_dims, device=dirs.device, dtype=dirs.dtype)
            color = color * 0.0 + solid
        return color
